"""Settings shared by every config; each dataset's file starts from ``base()``.

The paper's recipe (section 4.1, ../shared/reference/NOTES.md): MF-KPSEM (K=4, G=8, d_e=24,
after conv4), SGD with Nesterov momentum 0.9, weight decay 1e-4, lr 0.005 halved for the
first 100 steps, step decay, pretrained layers at 0.2x lr, 16-frame 224x224 clips, initialised
from the converted Kinetics-400 MFNet.
"""

import ml_collections


def parse_arg(arg: str, where: str, **defaults) -> ml_collections.ConfigDict:
  """A config's ``get_config(arg)`` options (big_vision's ``parse_arg`` idea).

  ``arg`` is ``,``-separated ``name=value`` or bare ``name`` (a switch: True); each value is
  cast to its default's type (``bool`` accepts true/false/1/0). ``defaults`` names every
  option; an unknown option or a value of the wrong type is one ``ValueError`` naming
  ``where`` (the config file) and the options.
  """
  options = ml_collections.ConfigDict(defaults)
  choices = ", ".join(f"{k}=<{type(v).__name__}>" if not isinstance(v, bool) else k
                      for k, v in defaults.items())
  unknown = []
  for token in filter(None, (t.strip() for t in arg.split(","))):
    name, _, value = token.partition("=")
    if name not in defaults:
      unknown.append(name)
      continue
    kind = type(defaults[name])
    try:
      if kind is bool:
        if value.lower() not in ("", "true", "1", "false", "0"):
          raise ValueError(value)
        options[name] = value.lower() in ("", "true", "1")
      elif isinstance(defaults[name], tuple):
        raise ValueError("tuples are set with --config.<field>")
      else:
        options[name] = kind(value)
    except ValueError:
      raise ValueError(f"{where}: {token!r}: expected {name}=<{kind.__name__}>") from None
  if unknown:
    raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}; the options are "
                     f"{choices}")
  return options


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      name="", config="default", data_dir="~/tensorflow_datasets", train_split="train",
      eval_split="test", num_classes=0, auto_prepare=False))
  c.clip = ml_collections.ConfigDict(dict(
      frames=16, interval=2, crop=224, train_scale=(224, 288), aspect=(0.8, 1.25), flip=True,
      eval_resize=256, eval_clips=10, eval_crops=3))
  c.model = ml_collections.ConfigDict(dict(
      backbone="mfnet3d", backbone_kwargs={}, use_kpsem=True,
      # match_gradient: where Eq. 9's match weights pass their gradient: "splits" (to the
      # split lines only), "paper" (everywhere) or "stopped" (nowhere); docs/models.md,
      # "The match gradient"
      kpsem=dict(num_regions=4, num_sets=8, embed_dim=24, adaptive=True,
                 match_gradient="splits"), kpsem_at="conv4",
      # the classifier's backbone feature: "mean" (global average) or "ordered" (per-frame
      # averages concatenated in time order; models.VideoClassifier)
      readout="mean",
      # How convolutions are computed (layers.STRATEGIES): "auto" is XLA's on GPUs/TPUs and
      # oneDNN's on CPUs where kpsem_jax.cpu_kernels builds; a pure-XLA strategy ("xla",
      # "patches_grad") also keeps AReSE's argmax to jnp.
      conv_strategy="auto"))
  # A checkpoint folder from `python -m kpsem_jax.convert` (or a training workdir's
  # best/ or checkpoints/ parent): matching tensors are loaded, the rest initialised.
  c.init_from = "checkpoints/mf_kpsem_init"
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=0.005, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_steps=100,
      decay_steps=(2000, 3200), decay_factor=0.1, pretrained_lr_mult=0.2,
      # > 0: the KPSEM branch's gradient (its parameters alone) is clipped to this norm
      # before the update (0: off); then, > 0: the whole gradient's global norm (0: off).
      kpsem_clip_grad_norm=1.0, clip_grad_norm=0.0,
      # KPSEM's split MLPs (kpsem/mlp_*) learn at this times the lr, or, with
      # split_mlp_adam_lr > 0, by Adam at that lr (the schedule's shape, not its size).
      split_mlp_lr_mult=1.0, split_mlp_adam_lr=0.003))
  c.batch_size = 64  # global, over all devices and grad_accum_steps
  c.grad_accum_steps = 1
  c.eval_batch_size = 32
  c.compute_dtype = "float32"  # "bfloat16" on GPUs
  c.num_train_steps = 4000
  c.log_every = 20
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.num_workers = -1  # grain worker processes; -1: one per core this process may use
  # Debugging: every process logs the video indices it reads per step, and a digest of its
  # final parameters, to workdir/inputs/process_{i}.jsonl.
  c.record_inputs = False
  return c
