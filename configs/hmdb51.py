"""MF-KPSEM on HMDB51 (split 1; --config.dataset.config=split2 for split 2). Paper batch 128.

    python train.py --config=configs/hmdb51.py --workdir=workdirs/hmdb51
"""

from kpsem_jax import config_base


def get_config():
  c = config_base.base()
  c.dataset.name = "hmdb51"
  c.dataset.config = "split1"
  c.dataset.num_classes = 51
  c.dataset.eval_split = "test"
  c.init_from = "checkpoints/mf_kpsem_hmdb51_init"
  c.batch_size = 128
  return c
