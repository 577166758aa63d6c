"""Settings shared by every config; each dataset's file starts from ``base()``.

The paper's recipe (section 4.1; docs/training.md): MF-KPSEM (K=4, G=8, d_e=24,
after conv4), SGD with Nesterov momentum 0.9, weight decay 1e-4, lr 0.005 halved for the
first 100 steps, step decay, pretrained layers at 0.2x lr, 16-frame 224x224 clips, initialised
from the converted Kinetics-400 MFNet.
"""

import importlib
import importlib.util
import os

import ml_collections


def configs_dir() -> str:
  """The folder of the shipped configs: the repository's ``configs/``, installed as
  ``kpsem_jax.configs``."""
  return os.path.dirname(importlib.util.find_spec("kpsem_jax.configs").origin)


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, loaded by path as ``--config`` loads it: ``name``
  is a path ending in ``.py``, or a shipped config's name (``"hmdb51"``: ``configs_dir()``'s
  ``hmdb51.py``)."""
  path = name if name.endswith(".py") else os.path.join(configs_dir(), f"{name}.py")
  spec = importlib.util.spec_from_file_location(
      "config_file_" + os.path.basename(path)[:-3], path)
  if spec is None:
    raise FileNotFoundError(f"{path}: not a config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def model_spec(config: ml_collections.ConfigDict) -> dict:
  """``create_model``'s keyword arguments from a config. Fixed regions (``adaptive=False``)
  are drawn from ``config.seed`` unless ``model.kpsem.fixed_regions_seed`` says otherwise,
  so each training seed has its own fixed split."""
  m = config.model
  kpsem = dict(m.kpsem) if m.use_kpsem else None
  if kpsem is not None and not kpsem.get("adaptive", True):
    kpsem.setdefault("fixed_regions_seed", int(config.seed))
  spec = dict(backbone=m.backbone, num_classes=config.dataset.num_classes,
              backbone_kwargs=dict(m.backbone_kwargs), kpsem=kpsem, kpsem_at=m.kpsem_at)
  if m.get("readout", "mean") != "mean":  # absent from the metadata of mean-readout models
    spec["readout"] = m.readout
  return spec


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


class Rule:
  """A field's constraint: :meth:`violation` says what is wrong with a value, or None;
  reported as ``config.<field>=<value><joiner><violation>``."""

  show, joiner = staticmethod(repr), ": "

  def violation(self, value, config=None):
    """What is wrong with ``value`` (``config``: the whole config, for rules that read
    other fields), or None."""
    raise NotImplementedError


class Checkpoint(Rule):
  """'' (none), or a folder holding a kpsem-jax checkpoint; a missing one names the
  convert command that creates it (MFNet backbones)."""

  show, joiner = staticmethod(str), " "

  def violation(self, value, config=None):
    if not value:
      return None
    path = os.path.expanduser(value)
    if os.path.exists(path):
      if os.path.isdir(os.path.join(path, "checkpoints")):
        return None
      return ("is not a kpsem-jax checkpoint (no 'checkpoints' folder in it): name a folder "
              "written by python -m kpsem_jax.convert or a training workdir, or train from "
              "scratch with --config.init_from=")
    how = ""
    if config is not None and config.model.backbone == "mfnet3d":
      how = (f"create it from the released MFNet with: python -m kpsem_jax.convert "
             f"--pytorch=MFNet3D_Kinetics-400_72.8.pth --output={value} --model="
             f"{'mf_kpsem' if config.model.use_kpsem else 'mfnet3d'} "
             f"--num_classes={config.dataset.num_classes} (docs/inference.md), or ")
    return f"does not exist: {how}train from scratch with --config.init_from="

  def __str__(self):
    return "'' or a checkpoint folder"


class AtLeast(Rule):
  """A finite number (an integer when ``integer``) at least ``least``."""

  def __init__(self, least, integer=False):
    self.least, self.integer = least, integer

  def violation(self, value, config=None):
    kind = "an integer" if self.integer else "a finite number"
    ok = (isinstance(value, int) if self.integer else isinstance(value, (int, float)))
    if (not ok or isinstance(value, bool) or value != value or value in (float("inf"), -float("inf"))
        or value < self.least):
      return f"must be {kind}, at least {self.least}"
    return None

  def __str__(self):
    return f">= {self.least}"


class OneOf(Rule):
  """One of ``choices``."""

  def __init__(self, *choices):
    self.choices = choices

  def violation(self, value, config=None):
    if value not in self.choices:
      return f"choose one of {', '.join(map(str, self.choices))}"
    return None

  def __str__(self):
    return " | ".join(map(str, self.choices))


# The model code's choices, spelled here so that configs import nothing of the model
# (tests/test_configs.py checks they equal layers.STRATEGIES and arese.MATCH_GRADIENTS).
CONV_STRATEGIES = ("auto", "xla", "group_loop", "patches", "patches_grad", "onednn")
MATCH_GRADIENTS = ("paper", "splits", "stopped")

# Every field of base(): (what it means, its rule or None). The one place a field's
# constraint is declared; train.py --config_help prints these, the trainer checks them before
# anything runs. Fields a config adds of its own (dataset.source_dir, ...) are listed too.
FIELDS = {
    "seed": ("initial values and the batches' order", AtLeast(0, integer=True)),
    "dataset.name": ("a dataset `python -m kpsem_jax.prepare --help` lists", None),
    "dataset.config": ("its build (e.g. split1, split2; prepare --config)", None),
    "dataset.data_dir": ("where prepared datasets live", None),
    "dataset.train_split": ("the split trained on", None),
    "dataset.eval_split": ("the split evaluated", None),
    "dataset.num_classes": ("classifier width; 0: from the prepared metadata",
                            AtLeast(0, integer=True)),
    "dataset.auto_prepare": ("build the dataset on first use when it is not prepared", None),
    "dataset.source_dir": ("the videos to build from (video_folder and the paper's sets)", None),
    "clip.frames": ("frames a clip", AtLeast(1, integer=True)),
    "clip.interval": ("frames between a clip's sampled frames", AtLeast(1, integer=True)),
    "clip.crop": ("a clip's height and width", AtLeast(1, integer=True)),
    "clip.train_scale": ("training: the shorter side is resized into this range", None),
    "clip.aspect": ("training: random aspect-ratio range of the crop", None),
    "clip.flip": ("training: random horizontal flips", None),
    "clip.eval_resize": ("evaluation: the shorter side is resized to this",
                         AtLeast(1, integer=True)),
    "clip.eval_clips": ("evaluation: clips a video (evenly spaced)", AtLeast(1, integer=True)),
    "clip.eval_crops": ("evaluation: crops a clip (1: centre, 3: left/centre/right)",
                        AtLeast(1, integer=True)),
    "model.backbone": ("mfnet3d or resnet3d", OneOf("mfnet3d", "resnet3d")),
    "model.backbone_kwargs": ("the backbone's widths and depths (mfnet3d: conv1_channels, "
                              "stage_channels, stage_depths, groups)", None),
    "model.use_kpsem": ("add KPSEM (false: the plain backbone)", None),
    "model.kpsem": ("KPSEM: num_regions (K), num_sets (G), embed_dim (d_e), adaptive, "
                    "match_gradient (splits | paper | stopped), ...", None),
    "model.kpsem_at": ("the stage KPSEM reads (conv2 .. conv5, res2 .. res5)", None),
    "model.readout": ("the classifier's input: mean, or ordered (per-frame, in time order)",
                      OneOf("mean", "ordered")),
    "model.kpsem.match_gradient": ("the gradient reaching the split lines (docs/models.md)",
                                   OneOf(*MATCH_GRADIENTS)),
    "model.conv_strategy": ("how convolutions are computed (auto: oneDNN on CPUs)",
                            OneOf(*CONV_STRATEGIES)),
    "init_from": ("a converted checkpoint or a workdir to start from ('': from scratch)",
                  Checkpoint()),
    "optimizer.lr": ("the learning rate (SGD, Nesterov momentum)", AtLeast(0.0)),
    "optimizer.momentum": ("SGD momentum", AtLeast(0.0)),
    "optimizer.nesterov": ("Nesterov momentum", None),
    "optimizer.weight_decay": ("weight decay", AtLeast(0.0)),
    "optimizer.warmup_steps": ("steps at half the lr at the start", AtLeast(0, integer=True)),
    "optimizer.decay_steps": ("steps at which the lr is multiplied by decay_factor", None),
    "optimizer.decay_factor": ("the lr's factor at each decay step", AtLeast(0.0)),
    "optimizer.pretrained_lr_mult": ("loaded (init_from) parameters' lr factor", AtLeast(0.0)),
    "optimizer.kpsem_clip_grad_norm": ("the KPSEM branch's gradient clipped to this norm "
                                       "(0: off)", AtLeast(0.0)),
    "optimizer.clip_grad_norm": ("the whole gradient clipped to this norm (0: off)",
                                 AtLeast(0.0)),
    "optimizer.split_mlp_lr_mult": ("KPSEM's split MLPs' lr factor (SGD)", AtLeast(0.0)),
    "optimizer.split_mlp_adam_lr": ("> 0: the split MLPs trained by Adam at this lr",
                                    AtLeast(0.0)),
    "batch_size": ("clips a step, over all devices and micro-batches", AtLeast(1, integer=True)),
    "grad_accum_steps": ("micro-batches a step (memory_fit may raise it)",
                         AtLeast(1, integer=True)),
    "memory_fit": ("a step over the memory budget: split (micro-batches), stop, or off",
                   OneOf("split", "stop", "off")),
    "memory_limit_gb": ("a device's memory budget; 0: what it has", AtLeast(0.0)),
    "eval_batch_size": ("views a batch in evaluation", AtLeast(1, integer=True)),
    "compute_dtype": ("float32, or bfloat16 (GPUs)", OneOf("float32", "bfloat16")),
    "num_train_steps": ("steps to train", AtLeast(1, integer=True)),
    "log_every": ("steps between logged metrics", AtLeast(1, integer=True)),
    "eval_every": ("steps between evaluations", AtLeast(1, integer=True)),
    "checkpoint_every": ("steps between checkpoints", AtLeast(1, integer=True)),
    "keep_checkpoints": ("checkpoints kept (the best one besides)", AtLeast(1, integer=True)),
    "num_workers": ("data loader processes; -1: one per core, 0: in this process",
                    AtLeast(-1, integer=True)),
    "record_inputs": ("debugging: log each step's video indices per process", None),
}


def violations(config: ml_collections.ConfigDict) -> list:
  """``["config.x=v: must be ...", ...]``: every field of ``config`` its ``FIELDS`` rule
  refuses (fields the config does not have are skipped)."""
  found = []
  for path, (_, rule) in FIELDS.items():
    value, present = config, True
    for key in path.split("."):
      if not isinstance(value, ml_collections.ConfigDict) or key not in value:
        present = False
        break
      value = value[key]
    if present and rule is not None:
      problem = rule.violation(value, config)
      if problem:
        found.append(f"config.{path}={rule.show(value)}{rule.joiner}{problem}")
  return found


def field_help(config: ml_collections.ConfigDict) -> str:
  """Every field of ``config``, one a line: ``--config.<field>=<value>``, then what it means
  and its rule (``FIELDS``; a group such as ``model.kpsem`` says it on its first field)."""
  leaves = []

  def walk(tree, prefix):
    for key in sorted(tree.keys()):
      value = tree[key]
      if isinstance(value, ml_collections.ConfigDict) and len(value):
        walk(value, f"{prefix}{key}.")
      else:
        leaves.append((f"{prefix}{key}", value))
  walk(config, "")
  lines, said = [], set()
  for path, value in leaves:
    known = next((p for p in sorted(FIELDS, key=len, reverse=True)
                  if path == p or path.startswith(p + ".")), None)
    text = f"  --config.{path}={value!r}"
    if known and known not in said:
      meaning, rule = FIELDS[known]
      text = f"{text:50s} {meaning}" + (f" [{rule}]" if rule else "")
      said.add(known)
    lines.append(text)
  return "\n".join(lines)


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
      # MFNet-3D's widths and depths (the released model's), settable from the command line
      # (--config.model.backbone_kwargs.stage_channels="(48, 96, 192, 384)")
      backbone="mfnet3d", backbone_kwargs=dict(
          conv1_channels=16, stage_channels=(96, 192, 384, 768), stage_depths=(3, 4, 6, 3),
          groups=16), use_kpsem=True,
      # match_gradient: where Eq. 9's match weights pass their gradient: "splits" (to the
      # split lines only), "paper" (everywhere) or "stopped" (nowhere); docs/models.md,
      # "The match gradient"
      kpsem=dict(num_regions=4, num_sets=8, embed_dim=24, adaptive=True,
                 match_gradient="splits"), kpsem_at="conv4",
      # the classifier's backbone feature: "mean" (global average) or "ordered" (per-frame
      # averages concatenated in time order; models.VideoClassifier)
      readout="mean",
      # How convolutions are computed (layers.STRATEGIES): "auto" is XLA's on GPUs/TPUs and
      # oneDNN's on CPUs where kpsem_jax.models.cpu_kernels builds; a pure-XLA strategy ("xla",
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
  # Before the first step the compiled step's memory (XLA's analysis) is compared with what
  # a device has: "split" raises grad_accum_steps (and lowers the eval batch) until it fits,
  # "stop" names the largest batch that fits, "off" does not check.
  c.memory_fit = "split"
  c.memory_limit_gb = 0.0  # a device's budget; 0: what it has (a CPU: the host's free memory)
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
