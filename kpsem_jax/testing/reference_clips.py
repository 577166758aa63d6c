"""The clip sampling as the loader did it before frames were stored one per record: decode
every sampled frame with Pillow, resize the whole frame, then crop (and flip a numpy view).

The tests compare the loader's crop-region resampling with it, draw for draw.
"""

import io

import numpy as np
from PIL import Image

from kpsem_jax.data import clips as clips_lib


def pillow_decode(jpeg: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  if frame.shape[1] == width and frame.shape[0] == height:
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def train_clip(frames: np.ndarray, spec: clips_lib.ClipSpec,
               rng: np.random.Generator) -> np.ndarray:
  """``frames``: every decoded frame of a video ``(N, H, W, 3)``; the same draws, in the
  same order, as ``clips_lib.train_clip``."""
  s = spec
  n = len(frames)
  start = int(rng.integers(0, clips_lib.train_starts(n, s.frames, s.interval)))
  clip = frames[clips_lib.window_indices(n, start, s.frames, s.interval)]
  h, w = clip.shape[1:3]
  short = rng.uniform(*s.train_scale)
  aspect = np.sqrt(rng.uniform(*s.aspect))
  scale = short / min(h, w)
  new_w = max(s.crop, int(round(w * scale * aspect)))
  new_h = max(s.crop, int(round(h * scale / aspect)))
  top = int(rng.integers(0, new_h - s.crop + 1))
  left = int(rng.integers(0, new_w - s.crop + 1))
  clip = np.stack([_resize(f, new_w, new_h)[top:top + s.crop, left:left + s.crop]
                   for f in clip])
  if s.flip and rng.random() < 0.5:
    clip = clip[:, :, ::-1]
  return clip


def eval_view(frames: np.ndarray, view: int, spec: clips_lib.ClipSpec) -> np.ndarray:
  """View ``view`` (clip-major: clip = view // num_crops) of a video, decoded again for
  each view."""
  from kpsem_jax.data import video  # pylint: disable=import-outside-toplevel
  clip_id, crop_id = divmod(view, spec.num_crops)
  n = len(frames)
  starts = clips_lib.clip_starts(n, spec.frames, spec.interval, spec.num_clips)
  clip = frames[clips_lib.window_indices(n, int(starts[clip_id]), spec.frames, spec.interval)]
  h, w = clip.shape[1:3]
  new_w, new_h = video.resized_size(w, h, spec.eval_resize)
  new_w, new_h = max(new_w, spec.crop), max(new_h, spec.crop)
  clip = np.stack([_resize(f, new_w, new_h) for f in clip])
  top, left = (new_h - spec.crop) // 2, (new_w - spec.crop) // 2
  if spec.num_crops > 1:
    offset = int(round(crop_id * (max(new_w, new_h) - spec.crop) / (spec.num_crops - 1)))
    top, left = (top, offset) if new_w >= new_h else (offset, left)
  return clip[:, top:top + spec.crop, left:left + spec.crop]
