"""The embedded default: a narrow MF-KPSEM on the generated synthetic_motion dataset.

    python train.py --config=configs/synthetic.py --workdir=workdirs/synthetic
    python train.py --config=configs/synthetic.py:tiny ...   # the test suite's tiny variant

Builds the dataset on first use (about 10 s), trains from scratch and evaluates per video,
sized for a 2-core CPU. Classes are motions (and their time reversals), so flips are off.
"""

from kpsem_jax import config_base


def get_config(arg: str = ""):
  """The default; ``arg="tiny"``: the tests' variant, a few seconds a step on 2 CPU cores
  (the ``tiny`` dataset config: 32x32, 8 frames, 32 train / 16 test videos; 12 steps)."""
  opts = config_base.parse_arg(arg, "configs/synthetic.py", tiny=False)
  c = config_base.base()
  c.dataset.name = "synthetic_motion"
  c.dataset.num_classes = 8
  c.dataset.auto_prepare = True
  # 8 of the 16 stored frames (interval 2): half the compute, 2 px of motion per frame.
  c.clip.update(dict(frames=8, interval=2, crop=48, train_scale=(48, 56), aspect=(0.9, 1.1),
                     flip=False, eval_resize=52, eval_clips=1, eval_crops=1))
  c.model.backbone_kwargs = dict(conv1_channels=8, stage_channels=(16, 32, 32, 64),
                                 stage_depths=(1, 1, 2, 1), groups=4)
  c.model.kpsem = dict(num_regions=4, num_sets=4, embed_dim=8, reduction_channels=(16, 16))
  c.init_from = ""
  c.optimizer.update(dict(lr=0.05, warmup_steps=20, decay_steps=(600, 780)))
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_train_steps = 900
  c.log_every = 20
  c.eval_every = 300
  c.checkpoint_every = 100
  if opts.tiny:
    c.dataset.config = "tiny"
    c.clip.update(dict(frames=8, crop=24, train_scale=(24, 28), eval_resize=26))
    c.model.backbone_kwargs = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32),
                                   stage_depths=(1, 1, 1, 1), groups=4)
    c.model.kpsem = dict(num_regions=4, num_sets=2, embed_dim=8, reduction_channels=(8, 8))
    c.model.kpsem_at = "conv3"
    c.optimizer.update(dict(lr=0.05, warmup_steps=0, decay_steps=()))
    c.update(dict(batch_size=8, eval_batch_size=8, num_train_steps=12, log_every=1,
                  eval_every=12, checkpoint_every=3, num_workers=0))  # no worker start-up
  return c
