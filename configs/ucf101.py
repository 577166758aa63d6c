"""MF-KPSEM on UCF101 (split 1; --config.dataset.config=split2 for split 2). Paper batch 80.

    python train.py --config=configs/ucf101.py --workdir=workdirs/ucf101
    python train.py --config=configs/ucf101.py:tiny_model ...  # input pipeline timing
"""

from kpsem_jax import config_base


def get_config(arg: str = ""):
  """The paper's run; ``arg="tiny_model"``: a trivially small C2D (2-D ResNet, width 4, one
  block per stage) from scratch on the same 16x224x224 clips, batch 8, one eval view per
  video: training that the input pipeline alone limits (benchmarks/loader_throughput.py
  --train_steps)."""
  opts = config_base.parse_arg(arg, "configs/ucf101.py", tiny_model=False)
  c = config_base.base()
  c.dataset.name = "ucf101"
  c.dataset.config = "split1"
  c.dataset.num_classes = 101
  c.dataset.eval_split = "test"
  c.init_from = "checkpoints/mf_kpsem_ucf101_init"
  c.batch_size = 80
  if opts.tiny_model:
    c.model.backbone = "resnet3d"
    c.model.backbone_kwargs = dict(stage_depths=(1, 1, 1, 1), base_width=4, temporal_kernel=1)
    c.model.use_kpsem = False
    c.init_from = ""
    c.clip.update(dict(eval_clips=1, eval_crops=1))
    c.update(dict(batch_size=8, eval_batch_size=8, num_train_steps=60, log_every=10,
                  eval_every=10**9, checkpoint_every=10**9))
  return c
