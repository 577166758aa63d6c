"""MF-KPSEM on Mini-Kinetics-200. Paper batch 64.

    python train.py --config=configs/mini_kinetics.py --workdir=workdirs/mini_kinetics
"""

from kpsem_jax import config_base


def get_config():
  c = config_base.base()
  c.dataset.name = "mini_kinetics"
  c.dataset.config = "default"
  c.dataset.num_classes = 200
  c.dataset.eval_split = "validation"
  c.init_from = "checkpoints/mf_kpsem_mini_kinetics_init"
  c.batch_size = 64
  return c
