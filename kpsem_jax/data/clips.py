"""Clips from a video: where a clip's window starts and which frames it takes, the training
clip's augmentation (random window, scale and aspect jitter, crop, flip, resampling only the
crop region) and the evaluation views (``num_clips`` windows x ``num_crops`` crops), all
``(T, H, W, 3)`` uint8. MFNet's protocol: docs/datasets.md.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from kpsem_jax.data import resample
from kpsem_jax.data import video as video_lib
from kpsem_jax.data.video_source import Video


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips are cut from a video (defaults: MFNet's protocol at 16x224x224).

  Sizes are in pixels: ``train_scale`` bounds the random short side, ``eval_resize`` is the
  eval short side, ``crop`` the square crop of both.
  """
  frames: int = 16
  interval: int = 2
  crop: int = 224
  train_scale: Tuple[int, int] = (224, 288)
  aspect: Tuple[float, float] = (0.8, 1.25)
  flip: bool = True
  eval_resize: int = 256
  num_clips: int = 1
  num_crops: int = 1


def clip_spec(clip, train: bool = False) -> ClipSpec:
  """The :class:`ClipSpec` of a config's ``clip`` fields (``config.clip``, or the ``clip`` of
  a checkpoint's saved config): training clips, or every evaluation view."""
  get = clip.get
  defaults = ClipSpec()
  return ClipSpec(frames=int(clip["frames"]), interval=int(get("interval", defaults.interval)),
                  crop=int(get("crop", defaults.crop)),
                  train_scale=tuple(get("train_scale", defaults.train_scale)),
                  aspect=tuple(get("aspect", defaults.aspect)),
                  flip=bool(get("flip", defaults.flip)) and train,
                  eval_resize=int(get("eval_resize", defaults.eval_resize)),
                  num_clips=1 if train else int(get("eval_clips", 1)),
                  num_crops=1 if train else int(get("eval_crops", 1)))


def window_length(clip_frames: int, interval: int) -> int:
  """Frames a clip spans, first to last sampled frame: ``(clip_frames - 1) * interval + 1``
  (the original PyTorch-MFNet samplers' ``frame_range``)."""
  return (clip_frames - 1) * interval + 1


def clip_starts(num_frames: int, clip_frames: int, interval: int, num_clips: int) -> np.ndarray:
  """Evenly spaced window starts covering the video (:func:`window_length`)."""
  last = max(0, num_frames - window_length(clip_frames, interval))
  if num_clips == 1:
    return np.array([last // 2])
  return np.round(np.linspace(0, last, num_clips)).astype(int)


def train_starts(num_frames: int, clip_frames: int, interval: int) -> int:
  """How many window starts training draws from (uniformly): ``0 .. n - 1``, every start
  whose window (:func:`window_length`) ends inside the video; 1 for a shorter video."""
  return max(1, num_frames - window_length(clip_frames, interval) + 1)


def window_indices(num_frames: int, start: int, clip_frames: int, interval: int) -> np.ndarray:
  """Frame indices ``start + i * interval`` of a clip, looped past the end of short videos."""
  return (start + interval * np.arange(clip_frames)) % num_frames


def resize_crop(frame: np.ndarray, box: Tuple[float, float, float, float], size: int,
                flip: bool = False) -> np.ndarray:
  """The ``size x size`` bilinear resampling of ``box`` (left, top, right, bottom, in source
  pixels) of ``frame``, mirrored left-right if ``flip``: the same pixels as resizing the
  whole frame by ``size / box width`` and cropping (Pillow's filter, evaluated on the crop
  only; ``kpsem_jax.data.resample``)."""
  return resample.Crop(frame.shape, box, size)(frame, flip)


def train_clip(video: Video, spec: ClipSpec, rng: np.random.Generator,
               out: Optional[np.ndarray] = None) -> np.ndarray:
  """One randomly sampled, scaled, cropped and flipped training clip ``(T, S, S, 3)``.

  Draws, in order: the window start, the short side in ``train_scale``, the aspect in
  ``aspect``, the crop's top and left, the flip. Only the crop region of each frame is
  resampled, into ``out`` (allocated when None).
  """
  s = spec
  n = video.num_frames
  start = int(rng.integers(0, train_starts(n, s.frames, s.interval)))
  frames = video.frames(window_indices(n, start, s.frames, s.interval))
  first = next(frames)
  h, w = first.shape[:2]
  short = rng.uniform(*s.train_scale)
  aspect = np.sqrt(rng.uniform(*s.aspect))
  scale = short / min(h, w)
  new_w = max(s.crop, int(round(w * scale * aspect)))
  new_h = max(s.crop, int(round(h * scale / aspect)))
  top = int(rng.integers(0, new_h - s.crop + 1))
  left = int(rng.integers(0, new_w - s.crop + 1))
  flip = bool(s.flip and rng.random() < 0.5)
  sx, sy = w / new_w, h / new_h
  box = (left * sx, top * sy, (left + s.crop) * sx, (top + s.crop) * sy)
  if out is None:
    out = np.empty((s.frames, s.crop, s.crop, 3), np.uint8)
  crop = resample.Crop(first.shape, box, s.crop)  # one set of coefficients for the clip
  crop(first, flip, out[0])
  for t, frame in enumerate(frames, 1):
    crop(frame, flip, out[t])
  return out


def eval_views(video: Video, spec: ClipSpec) -> np.ndarray:
  """All ``num_clips x num_crops`` views of a video, uint8 ``(V, T, S, S, 3)``, clip-major
  (view = clip * num_crops + crop). Each clip's frames are decoded and resized once for
  all its crops: the short side to ``eval_resize`` (at least ``crop``), then the centre
  crop, or ``num_crops`` crops evenly along the long side (left/top ... right/bottom)."""
  n = video.num_frames
  starts = clip_starts(n, spec.frames, spec.interval, spec.num_clips)
  views = np.empty((spec.num_clips * spec.num_crops, spec.frames, spec.crop, spec.crop, 3),
                   np.uint8)
  for c, start in enumerate(starts):
    frames = video.frames(window_indices(n, int(start), spec.frames, spec.interval))
    for t, frame in enumerate(frames):
      h, w = frame.shape[:2]
      new_w, new_h = video_lib.resized_size(w, h, spec.eval_resize)
      new_w, new_h = max(new_w, spec.crop), max(new_h, spec.crop)
      frame = _resize(frame, new_w, new_h)
      for k, (top, left) in enumerate(_crop_corners(new_w, new_h, spec)):
        views[c * spec.num_crops + k, t] = frame[top:top + spec.crop, left:left + spec.crop]
  return views


def _crop_corners(width: int, height: int, spec: ClipSpec) -> List[Tuple[int, int]]:
  top, left = (height - spec.crop) // 2, (width - spec.crop) // 2
  if spec.num_crops == 1:
    return [(top, left)]
  corners = []
  for k in range(spec.num_crops):  # evenly along the long side
    offset = int(round(k * (max(width, height) - spec.crop) / (spec.num_crops - 1)))
    corners.append((top, offset) if width >= height else (offset, left))
  return corners


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  if frame.shape[1] == width and frame.shape[0] == height:
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
