"""The runs of the CPU-scale ablation suite (``python -m kpsem_jax.experiments``), one each.

    python train.py --config=configs/ablation.py:c2d_kpsem,k=9 --workdir=workdirs/c2d_k9

``arg``: a model, ``c2d``, ``c2d_kpsem``, ``mfnet`` or ``mf_kpsem``, then any of ``,k=<K>``
(regions), ``,g=<G>`` (AReSE sets), ``,fixed`` (fixed instead of adaptive regions),
``,steps=<n>`` (default 450). Everything else is ``configs/synthetic.py``: 8x48x48 clips of
synthetic_motion, batch 16, SGD at lr 0.05 (x0.1 at 80% and 93% of the steps).

The time-blind C2D is a 2-D ResNet (every kernel 1xkxk, one block per stage, width 8). KPSEM
sits on the stride-4 stage (12x12 maps at 48x48 input): objects move 1-2 input pixels per
frame, well under a map pixel per frame on the paper's stages (stride 8-16) at this size.
"""

from configs import synthetic

C2D = dict(backbone="resnet3d", backbone_kwargs=dict(stage_depths=(1, 1, 1, 1), base_width=8,
                                                      temporal_kernel=1), kpsem_at="res2")
MFNET = dict(backbone="mfnet3d", backbone_kwargs=dict(
    conv1_channels=8, stage_channels=(16, 32, 32, 64), stage_depths=(1, 1, 2, 1), groups=4),
             kpsem_at="conv2")
KPSEM = dict(num_regions=4, num_sets=4, embed_dim=8, reduction_channels=(16, 16))
MODELS = {"c2d": C2D, "c2d_kpsem": C2D, "mfnet": MFNET, "mf_kpsem": MFNET}


def get_config(arg: str = "c2d_kpsem"):
  model, *options = arg.split(",")
  if model not in MODELS:
    raise ValueError(f"configs/ablation.py: unknown model {model!r}; choose one of "
                     f"{', '.join(MODELS)}")
  opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in options)
  unknown = set(opts) - {"k", "g", "fixed", "steps"}
  if unknown:
    raise ValueError(f"configs/ablation.py: unknown option(s) {sorted(unknown)}; the options "
                     "are k=<regions>, g=<sets>, fixed, steps=<n>")
  c = synthetic.get_config()
  backbone = MODELS[model]
  c.model.backbone = backbone["backbone"]
  c.model.backbone_kwargs = dict(backbone["backbone_kwargs"])
  c.model.kpsem_at = backbone["kpsem_at"]
  c.model.use_kpsem = model.endswith("kpsem")
  kpsem = dict(KPSEM)
  if "k" in opts:
    kpsem["num_regions"] = int(opts["k"])
  if "g" in opts:
    kpsem["num_sets"] = int(opts["g"])
  if "fixed" in opts:
    kpsem["adaptive"] = False
  c.model.kpsem = kpsem
  steps = int(opts.get("steps", 450))
  c.optimizer.update(dict(lr=0.05, warmup_steps=max(1, steps // 20),
                          decay_steps=(int(steps * 0.8), int(steps * 0.93))))
  c.update(dict(batch_size=16, eval_batch_size=32, num_train_steps=steps,
                log_every=max(1, steps // 10), eval_every=steps,
                checkpoint_every=max(1, steps // 4), keep_checkpoints=1))
  return c
