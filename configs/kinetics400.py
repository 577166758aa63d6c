"""MFNet-3D on Kinetics-400 from scratch: the pretraining behind the released weights.

    python -m kpsem_jax.prepare kinetics400 --source_dir=/data/kinetics400 --data_dir=...
    python train.py --config=configs/kinetics400.py --workdir=workdirs/kinetics400

The model (plain MFNet-3D, 400 classes), the clips (16 frames at interval 2, short side
scaled in [224, 288] with aspect jitter, 224 crops, flips; 10 clips x 3 crops at test) and
the optimiser family (SGD, Nesterov 0.9, weight decay 1e-4, step decay) are the release's
(docs/training.md). The learning rate, batch and schedule are ours: the notes do
not give the release's pretraining schedule; change them for your hardware.
"""

from kpsem_jax import config_base


def get_config():
  c = config_base.base()
  c.dataset.name = "kinetics400"
  c.dataset.config = "default"
  c.dataset.num_classes = 400
  c.dataset.eval_split = "validation"
  c.model.use_kpsem = False
  c.init_from = ""
  c.batch_size = 256
  c.eval_batch_size = 240
  c.optimizer.update(dict(lr=0.1, warmup_steps=2000, decay_steps=(200_000, 280_000),
                          pretrained_lr_mult=1.0))
  c.num_train_steps = 320_000
  c.eval_every = 20_000
  c.checkpoint_every = 2_000
  return c
