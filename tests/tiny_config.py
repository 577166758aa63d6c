"""The test suite's tiny training config: a few seconds a step on a 2-core CPU.

In Python: ``tiny_config.get_config()``; for ``train.py``:
``--config=tests/tiny_config.py --config.dataset.data_dir=DIR``.
"""

from kpsem_jax import trainer


def get_config(steps=12):
  c = trainer.load_config("synthetic")
  c.dataset.config = "tiny"  # 32x32, 8 frames, 32 train / 16 test videos
  c.clip.update(dict(frames=8, crop=24, train_scale=(24, 28), eval_resize=26))
  c.model.backbone_kwargs = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32),
                                 stage_depths=(1, 1, 1, 1), groups=4)
  c.model.kpsem = dict(num_regions=4, num_sets=2, embed_dim=8, reduction_channels=(8, 8))
  c.model.kpsem_at = "conv3"
  c.optimizer.update(dict(lr=0.05, warmup_steps=0, decay_steps=()))
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = int(steps)
  c.log_every = 1
  c.eval_every = int(steps)
  c.checkpoint_every = 3
  return c
