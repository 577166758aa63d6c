"""MF-KPSEM on your own videos (``prepare video_folder``; docs/datasets.md has the layouts).

    python -m kpsem_jax.prepare video_folder --source_dir=/data/my_videos
    python train.py --config=configs/video_folder.py --workdir=workdirs/mine \\
        --config.dataset.source_dir=/data/my_videos

The classes (and their number) come from the prepared metadata. Given ``source_dir``, a
dataset not yet prepared is built on first use. Training starts from scratch; for the
released Kinetics-400 weights, convert them (``python -m kpsem_jax.convert ... --model=
mf_kpsem --num_classes=<your classes>``) and pass ``--config.init_from=<that folder>``.
``--config.dataset.config=<name>`` picks a build named with ``prepare --config=<name>``.
"""

from configs import common


def get_config():
  c = common.base()
  c.dataset.name = "video_folder"
  c.dataset.config = "default"
  c.dataset.source_dir = ""
  c.dataset.num_classes = 0  # 0: from the prepared metadata
  c.dataset.auto_prepare = True
  c.dataset.eval_split = "test"
  c.init_from = ""
  c.batch_size = 32
  c.eval_batch_size = 30
  return c
