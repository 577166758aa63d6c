"""MF-KPSEM on UCF101 (split 1; --config.dataset.config=split2 for split 2). Paper batch 80.

    python train.py --config=configs/ucf101.py --workdir=workdirs/ucf101
"""

from configs import common


def get_config():
  c = common.base()
  c.dataset.name = "ucf101"
  c.dataset.config = "split1"
  c.dataset.num_classes = 101
  c.dataset.eval_split = "test"
  c.init_from = "checkpoints/mf_kpsem_ucf101_init"
  c.batch_size = 80
  return c
