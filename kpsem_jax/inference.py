"""Inference from a kpsem-jax checkpoint: one jit-compiled function, a small Python API.

    from kpsem_jax.inference import load_predictor
    predictor = load_predictor("checkpoints/mfnet_k400")
    predictor.predict("video.mp4", top_k=5)      # [(label, probability), ...]
    predictor.logits(normalize(clips_uint8))      # (N, num_classes) numpy
"""

from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from kpsem_jax import checkpoint, video
from kpsem_jax.models import create_model

# MFNet's normalisation: pixels in [0, 1], minus the mean, divided by one std for all channels.
MEAN = np.array([124.0, 117.0, 104.0], np.float32) / 255.0
STD = 1.0 / (0.0167 * 255.0)


def normalize(clips) -> jax.Array:
  """uint8 RGB ``(..., 3)`` in [0, 255] -> float32 as MFNet expects."""
  return (jnp.asarray(clips, jnp.float32) / 255.0 - MEAN) / STD


class Predictor:
  """A model and its variables behind one jit-compiled inference function."""

  def __init__(self, variables, metadata):
    self.metadata = metadata
    self.model = create_model(**metadata["model"])
    self.variables = variables
    self.num_classes = int(metadata["model"]["num_classes"])
    self.frames = int(metadata.get("frames", 16))
    names = metadata.get("class_names")
    self.class_names: List[str] = list(names) if names else [
        f"class_{i}" for i in range(self.num_classes)]
    self._forward = jax.jit(lambda v, x: self.model.apply(v, x, train=False))

  def logits(self, clips) -> np.ndarray:
    """``(N, T, H, W, 3)`` normalised float clips -> ``(N, num_classes)`` logits."""
    clips = jnp.asarray(clips, jnp.float32)
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f"clips must be (N, T, H, W, 3), got {clips.shape}")
    return np.asarray(self._forward(self.variables, clips))

  def predict(self, video_path: str, top_k: int = 5, num_clips: int = 4, interval: int = 2,
              crop: int = 224) -> List[Tuple[str, float]]:
    """Top-k ``(label, probability)`` for a video file: softmax averaged over ``num_clips``
    evenly spaced 16-frame windows (resize short side 256, centre crop ``crop``)."""
    frames = video.read_video(video_path, short_side=256 * crop // 224)
    starts = video.clip_starts(len(frames), self.frames, interval, num_clips)
    clips = np.stack([video.sample_clip(frames, s, self.frames, interval, crop) for s in starts])
    probs = jax.nn.softmax(self.logits(normalize(clips)), axis=-1).mean(axis=0)
    order = np.argsort(-np.asarray(probs))[:top_k]
    return [(self.class_names[i], float(probs[i])) for i in order]


def load_predictor(checkpoint_dir: str) -> Predictor:
  """A :class:`Predictor` for a converted (or trained) kpsem-jax checkpoint folder."""
  variables, metadata = checkpoint.load_variables(checkpoint_dir)
  return Predictor(variables, metadata)
