"""Tiny random-weight checkpoints (inference, visualisation tests) and a tiny training config."""

import jax
import jax.numpy as jnp

from kpsem_jax.config_base import load_config
from kpsem_jax.models.classifier import create_model
from kpsem_jax.train import checkpoint

CLASSES = [f"action_{i}" for i in range(6)]
CLIP = dict(frames=8, interval=2, crop=32, eval_resize=36, eval_clips=2, eval_crops=3)


def spec(kpsem=True):
  kwargs = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32), stage_depths=(1, 1, 1, 1),
                groups=4)
  return dict(backbone="mfnet3d", num_classes=len(CLASSES), backbone_kwargs=kwargs,
              kpsem=dict(num_regions=4, num_sets=2, embed_dim=8, reduction_channels=(8, 8))
              if kpsem else None, kpsem_at="conv3")


def save_tiny_checkpoint(directory, kpsem=True, seed=0):
  """A kpsem-jax checkpoint of a narrow (MF-KPSEM or MFNet) model with random weights."""
  model_spec = spec(kpsem)
  model = create_model(**model_spec)
  variables = model.init(jax.random.PRNGKey(seed),
                         jnp.zeros((1, CLIP["frames"], CLIP["crop"], CLIP["crop"], 3)))
  metadata = checkpoint.make_metadata(model_spec, CLIP["frames"], CLASSES,
                                      config={"clip": dict(CLIP)})
  checkpoint.save_variables(str(directory), variables, metadata)
  return model, variables


def train_config(data_dir, steps=12):
  """``configs/synthetic.py:tiny`` reading ``data_dir``, ``steps`` steps, evaluated at the end."""
  c = load_config("synthetic", "tiny")
  c.dataset.data_dir = str(data_dir)
  c.num_train_steps = c.eval_every = int(steps)
  return c
