"""MF-KPSEM on your own videos (``prepare video_folder``; docs/datasets.md has the layouts).

    python -m kpsem_jax.prepare video_folder --source_dir=/data/my_videos
    python train.py --config=configs/video_folder.py:small --workdir=workdirs/mine \\
        --config.dataset.source_dir=/data/my_videos

``get_config()``: the paper's MF-KPSEM (16x224x224 clips, batch 32), for a GPU or for
fine-tuning the released weights; ``get_config("small")``: a narrow MF-KPSEM on 8x112x112
clips, batch 8, trained from scratch, sized for a CPU (README: its time and memory here).
Widths and depths are fields (``--config.model.backbone_kwargs.stage_channels="(32, 64,
128, 256)"``); before the first step the run checks that the step fits in memory and splits
the batch into micro-batches when it does not (``config.memory_fit``).

The classes (and their number) come from the prepared metadata. Given ``source_dir``, a
dataset not yet prepared is built on first use. Training starts from scratch; for the
released Kinetics-400 weights, convert them (``python -m kpsem_jax.convert ... --model=
mf_kpsem --num_classes=<your classes>``) and pass ``--config.init_from=<that folder>``.
``--config.dataset.config=<name>`` picks a build named with ``prepare --config=<name>``.
"""

from kpsem_jax import config_base


def get_config(arg: str = ""):
  opts = config_base.parse_arg(arg, "configs/video_folder.py", small=False)
  c = config_base.base()
  c.dataset.name = "video_folder"
  c.dataset.config = "default"
  c.dataset.source_dir = ""
  c.dataset.num_classes = 0  # 0: from the prepared metadata
  c.dataset.auto_prepare = True
  c.dataset.eval_split = "test"
  c.init_from = ""
  c.batch_size = 32
  c.eval_batch_size = 30
  if opts.small:
    # 8 frames 4 apart (29 frames, about 1.2 s at 25 fps) at 112x112; conv4 is 7x7.
    c.clip.update(dict(frames=8, interval=4, crop=112, train_scale=(112, 144),
                       eval_resize=128, eval_clips=2, eval_crops=1))
    c.model.backbone_kwargs = dict(conv1_channels=16, stage_channels=(48, 96, 192, 384),
                                   stage_depths=(1, 1, 2, 1), groups=8)
    c.model.kpsem = dict(num_regions=4, num_sets=4, embed_dim=16, adaptive=True,
                         match_gradient="splits")
    c.optimizer.update(dict(lr=0.02, warmup_steps=50, decay_steps=(1000, 1300)))
    c.update(dict(batch_size=8, eval_batch_size=8, num_train_steps=1500, log_every=10,
                  eval_every=500, checkpoint_every=100))
  return c
