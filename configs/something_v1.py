"""MF-KPSEM on Something-Something v1 (labels in labels.csv line order). Paper batch 64.

    python train.py --config=configs/something_v1.py --workdir=workdirs/something_v1

No horizontal flips: several classes are defined by left/right.
"""

from kpsem_jax import config_base


def get_config():
  c = config_base.base()
  c.dataset.name = "something_something_v1"
  c.dataset.num_classes = 174
  c.dataset.eval_split = "validation"
  c.init_from = "checkpoints/mf_kpsem_something_v1_init"
  c.clip.flip = False
  c.clip.interval = 1  # 15-120 frames at 12 fps
  c.batch_size = 64
  return c
