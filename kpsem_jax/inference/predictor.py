"""Inference from a kpsem-jax checkpoint: one jit-compiled function, a small Python API.

    from kpsem_jax.inference.predictor import load_predictor
    predictor = load_predictor("workdirs/hmdb51")   # a training workdir or converted checkpoint
    predictor.predict("video.mp4", top_k=5)          # [(label, probability), ...]
    predictor.logits(normalize(clips_uint8))         # (N, num_classes) numpy

``predict`` uses the evaluation protocol of the checkpoint's training config (clips x crops,
see ``clips.eval_views``); a converted checkpoint gets MFNet's (16 frames at interval
2, short side 256, 10 clips x 3 crops of 224).
"""

import collections
import dataclasses
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import video
from kpsem_jax.data import video_source
from kpsem_jax.models.classifier import create_model, normalize
from kpsem_jax.train import checkpoint, memory_fit

def _centre_crop(clip: np.ndarray, crop: int) -> np.ndarray:
  """``(T, H, W, 3)`` -> ``(T, crop, crop, 3)``; a side shorter than ``crop`` is an error."""
  h, w = clip.shape[1:3]
  if h < crop or w < crop:
    raise video.VideoError(f"frames of {w}x{h} are smaller than the {crop}x{crop} crop")
  top, left = (h - crop) // 2, (w - crop) // 2
  return clip[:, top:top + crop, left:left + crop]


def clip_spec_of(metadata) -> clips_lib.ClipSpec:
  """The evaluation views a checkpoint was trained for (MFNet's 10 x 3 when it does not say)."""
  clip = (metadata.get("config") or {}).get("clip")
  if not clip:  # a converted checkpoint: MFNet's protocol
    clip = dict(frames=int(metadata.get("frames", 16)), eval_clips=10, eval_crops=3)
  return clips_lib.clip_spec(clip)


PRECISIONS = ("float32", "bfloat16")


def has_bf16_units() -> bool:
  """Whether JAX's default device computes bfloat16 natively: a GPU or TPU, or a CPU with
  bf16 instructions (``avx512_bf16`` or ``amx_bf16`` among its flags)."""
  if jax.default_backend() != "cpu":
    return True
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "").split()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


def bfloat16_variables(variables):
  """``variables`` with the backbone's parameters and BatchNorm statistics in bfloat16 (its
  convolutions then run on bf16 units); KPSEM's and the classifier's stay float32."""
  def cast(path, leaf):
    return leaf.astype(jnp.bfloat16) if "backbone" in jax.tree_util.keystr(path) else leaf
  return jax.tree_util.tree_map_with_path(cast, variables)


class Predictor:
  """A model and its variables behind one jit-compiled inference function.

  ``precision``: ``"float32"``, or ``"bfloat16"`` (the backbone in bfloat16, on CPUs with
  bf16 units: :func:`has_bf16_units`; logits float32)."""

  def __init__(self, variables, metadata, precision: str = "float32"):
    if precision not in PRECISIONS:
      raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "bfloat16" and not has_bf16_units():
      raise ValueError("precision bfloat16 needs bf16 units (a GPU, or a CPU with avx512_bf16 "
                       "or amx_bf16); this CPU has none: use float32")
    self.metadata = metadata
    self.precision = precision
    self.model = create_model(**metadata["model"])
    self.variables = variables
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    self._run_variables = bfloat16_variables(variables) if precision == "bfloat16" else variables
    self.num_classes = int(metadata["model"]["num_classes"])
    self.clip_spec = clip_spec_of(metadata)
    self.frames = self.clip_spec.frames
    names = metadata.get("class_names")
    self.class_names: List[str] = list(names) if names else [
        f"class_{i}" for i in range(self.num_classes)]
    self._forward_float = jax.jit(lambda v, x: self.model.apply(
        v, x.astype(dtype), train=False).astype(jnp.float32))
    self._forward = jax.jit(lambda v, x: self.model.apply(
        v, normalize(x).astype(dtype), train=False).astype(jnp.float32))

  def logits(self, clips) -> np.ndarray:
    """``(N, T, H, W, 3)`` normalised float clips -> ``(N, num_classes)`` logits."""
    clips = jnp.asarray(clips, jnp.float32)
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f"clips must be (N, T, H, W, 3), got {clips.shape}")
    return np.asarray(self._forward_float(self._run_variables, clips))

  def uint8_logits(self, clips: np.ndarray) -> np.ndarray:
    """``(N, T, H, W, 3)`` uint8 RGB clips -> logits; normalised on the device."""
    return np.asarray(self._forward(self._run_variables, clips))

  def compile(self, batch_size: int, spec: Optional[clips_lib.ClipSpec] = None,
              memory_limit_gb: float = 0.0):
    """Compiles the forward pass for ``batch_size`` views of ``spec`` ahead of time; raises
    :class:`memory_fit.DoesNotFit` naming the largest batch that fits when XLA's memory
    analysis says it needs more than the device has (``memory_limit_gb``: that budget)."""
    s = spec or self.clip_spec

    def compile_at(size):
      shape = jax.ShapeDtypeStruct((size, s.frames, s.crop, s.crop, 3), jnp.uint8)
      return self._forward.lower(self._run_variables, shape).compile()
    budget = memory_fit.budget_bytes(memory_limit_gb)
    try:
      size, _, _ = memory_fit.largest_fitting(compile_at, range(1, batch_size + 1), budget)
    except memory_fit.DoesNotFit as e:
      raise memory_fit.DoesNotFit(f"the forward pass does not fit in memory: {e} (one view "
                                  f"of {s.frames}x{s.crop}x{s.crop})") from None
    if size != batch_size:
      raise memory_fit.DoesNotFit(
          f"a batch of {batch_size} views does not fit in the {memory_fit.describe(budget)} "
          f"a device has: use --batch_size={size} or less")

  def views(self, video_path: str, spec: Optional[clips_lib.ClipSpec] = None,
            allow_truncated: bool = False) -> np.ndarray:
    """All ``num_clips x num_crops`` evaluation views of a video, uint8 ``(V, T, S, S, 3)``.

    Raises ``video.VideoError`` naming the file when it cannot be decoded, and
    ``video.TruncatedVideoError`` when decoding ended well short of the frames its container
    promises (as ``prepare`` checks), unless ``allow_truncated``."""
    s = spec or self.clip_spec
    frames, info = video.read_video(video_path, short_side=s.eval_resize, with_info=True)
    if not allow_truncated:
      video.check_complete(video_path, len(frames), info["expected_frames"])
    return clips_lib.eval_views(video_source.Video.from_frames(frames), s)

  def softmax(self, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Per-clip softmax ``(N, num_classes)`` of uint8 clips, in batches of ``batch_size``
    (the last one padded: one compilation)."""
    probs = []
    for start in range(0, len(clips), batch_size):
      batch = clips[start:start + batch_size]
      n = len(batch)
      if n < batch_size:
        batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, axis=0)])
      probs.append(jax.nn.softmax(self.uint8_logits(batch)[:n], axis=-1))
    return np.asarray(np.concatenate(probs))

  def probabilities(self, views: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Softmax averaged over ``views`` (in fixed-size, padded batches: one compilation)."""
    return self.softmax(views, min(batch_size, len(views))).mean(axis=0)

  def top(self, probs: np.ndarray, top_k: int = 5) -> List[Tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [(self.class_names[i], float(probs[i])) for i in order]

  def predict(self, video_path: str, top_k: int = 5,
              spec: Optional[clips_lib.ClipSpec] = None,
              batch_size: int = 8) -> List[Tuple[str, float]]:
    """Top-k ``(label, probability)`` for a video file, softmax averaged over its views."""
    return self.top(self.probabilities(self.views(video_path, spec), batch_size), top_k)

  def timeline(self, video_path: str, stride_seconds: Optional[float] = None, top_k: int = 5,
               spec: Optional[clips_lib.ClipSpec] = None, batch_size: int = 8
               ) -> List[Dict]:
    """One prediction per sliding window over the whole video, decoded as a stream.

    The window is the evaluation clip (``frames`` at ``interval``, centre crop), moved by
    ``stride_seconds`` (at the video's fps; 25 when it does not say); None moves it by one
    window, so consecutive windows leave no gap. A video shorter than one window gets one
    window, looped. Returns ``[{"start", "end", "top": [{"label",
    "probability"}, ...]}, ...]`` with times in seconds.
    """
    s = spec or self.clip_spec
    span = s.frames * s.interval
    info: Dict = {}
    recent = collections.deque(maxlen=span)  # the frames of the current window
    windows, pending = [], []
    fps = stride = None
    count, next_start = 0, 0

    def flush():
      probs = self.softmax(np.stack([clip for _, clip in pending]), batch_size)
      for (start, _), p in zip(pending, probs):
        end = min(start + span, count)  # a looped short video ends with its last frame
        windows.append({"start": start / fps, "end": end / fps, "top": [
            {"label": label, "probability": q} for label, q in self.top(p, top_k)]})
      pending.clear()

    for frame in video.stream_frames(video_path, s.eval_resize, info):
      if fps is None:
        fps = info["fps"] or 25.0
        stride = span if stride_seconds is None else max(1, int(round(stride_seconds * fps)))
      recent.append(frame)
      count += 1
      if count - span == next_start:
        pending.append((next_start, _centre_crop(np.stack(list(recent)[::s.interval]), s.crop)))
        next_start += stride
        if len(pending) == batch_size:
          flush()
    if not windows and not pending:  # shorter than one window: loop it
      frames = np.stack(list(recent))
      idx = clips_lib.window_indices(count, 0, s.frames, s.interval)
      pending.append((0, _centre_crop(frames[idx], s.crop)))
    if pending:
      flush()
    return windows

  def with_spec(self, **changes) -> clips_lib.ClipSpec:
    """This checkpoint's clip spec with some fields replaced (e.g. ``num_clips=2``)."""
    return dataclasses.replace(self.clip_spec, **changes)


def load_predictor(checkpoint_dir: str, prefer_best: bool = True,
                   precision: str = "float32") -> Predictor:
  """A :class:`Predictor` for a converted checkpoint folder or a training workdir (its best
  checkpoint when it has one, else its latest), computing in ``precision``."""
  variables, metadata = checkpoint.load_variables(checkpoint_dir, prefer_best=prefer_best)
  return Predictor(variables, metadata, precision)
