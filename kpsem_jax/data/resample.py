"""The training crop's resampling: Pillow's bilinear filter on a box of a frame, faster.

``Crop(frame_shape, box, size)(frame, flip, out)`` writes the ``size x size`` bilinear
resampling of ``box`` (left, top, right, bottom in source pixels) of an ``(H, W, 3)`` uint8
frame into ``out``: the same bytes as ``Image.fromarray(frame).resize((size, size), BILINEAR,
box=box)`` (mirrored if ``flip``). The filter's coefficients are computed here as Pillow
computes them (its ``precompute_coeffs``: a triangle stretched by the downscale factor,
box coordinates in float32, weights in 22-bit fixed point); ``resample.cc`` applies them to
three channels in one call per frame. That C++ is compiled with the system's C++ compiler
on first use and cached (``KPSEM_JAX_CACHE``, default ``~/.cache/kpsem_jax``); where it
cannot be built, or with ``KPSEM_JAX_NATIVE_RESAMPLE=0``, Pillow does the work (same
bytes, about 2.5x the time).
"""

import ctypes
import math
import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from kpsem_jax import native

SOURCE = os.path.join(os.path.dirname(__file__), "resample.cc")
PRECISION_BITS = 22  # Pillow's, for 8-bit images
_I32 = ctypes.POINTER(ctypes.c_int32)
_U8 = ctypes.POINTER(ctypes.c_uint8)


class _State:
  library = None
  reason: Optional[str] = None  # why the C++ is not used, once tried


def coefficients(in_size: int, start: float, end: float, out_size: int
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(first, count, weights)`` of each of ``out_size`` outputs resampling source pixels
  ``[start, end)`` of ``in_size``: Pillow's bilinear coefficients, bit for bit.
  ``weights`` is int32 ``(out_size, taps)`` in 22-bit fixed point, zero past ``count``."""
  start32, end32 = np.float32(start), np.float32(end)
  scale = float(np.float32(end32 - start32)) / out_size  # float subtraction, as Pillow's
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale  # the bilinear filter's support, stretched
  taps = int(math.ceil(support)) * 2 + 1
  center = float(start32) + (np.arange(out_size) + 0.5) * scale
  first = np.maximum((center - support + 0.5).astype(np.int64), 0)
  count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
  x = np.arange(taps)
  weights = 1.0 - np.abs((x[None, :] + first[:, None] - center[:, None] + 0.5)
                         * (1.0 / filterscale))
  weights = np.where((x[None, :] < count[:, None]) & (weights > 0), weights, 0.0)
  total = np.zeros(out_size)
  for column in range(taps):  # summed left to right, as Pillow sums them
    total = total + weights[:, column]
  weights = np.where(total[:, None] != 0, weights / np.where(total == 0, 1, total)[:, None],
                     weights)
  fixed = np.where(weights < 0, -0.5 + weights * (1 << PRECISION_BITS),
                   0.5 + weights * (1 << PRECISION_BITS))
  return first.astype(np.int32), count.astype(np.int32), fixed.astype(np.int32)


def available() -> bool:
  """Whether the C++ resampler is built and loaded (building it on the first call)."""
  if _State.library is None and _State.reason is None:
    compiler = native.compiler()
    if os.environ.get("KPSEM_JAX_NATIVE_RESAMPLE", "1") == "0":
      _State.reason = "turned off by KPSEM_JAX_NATIVE_RESAMPLE=0"
    elif compiler is None:
      _State.reason = "no C++ compiler (g++ or c++, or $CXX)"
    else:
      try:
        library = ctypes.CDLL(native.build_library("resample", [SOURCE], lambda out: [
            compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", SOURCE, "-o", out]))
        library.kpsem_resample_rgb.restype = None
        _State.library = library
      except (OSError, RuntimeError) as e:
        _State.reason = str(e)
  return _State.library is not None


def unavailable_reason() -> Optional[str]:
  available()
  return _State.reason


def _pointer(array: np.ndarray, kind):
  return array.ctypes.data_as(kind)


class Crop:
  """The resampling of one box of frames of one size into ``size x size`` (a training
  clip's frames share it): coefficients computed once, applied per frame."""

  def __init__(self, frame_shape: Tuple[int, ...], box: Tuple[float, float, float, float],
               size: int, native: Optional[bool] = None):
    self.box, self.size = tuple(box), size
    self.native = available() if native is None else native
    if not self.native:
      return
    height, width = frame_shape[:2]
    x_first, x_count, x_coef = coefficients(width, box[0], box[2], size)
    y_first, y_count, y_coef = coefficients(height, box[1], box[3], size)
    self.row0 = int(y_first[0])
    self.rows = int(y_first[-1] + y_count[-1]) - self.row0
    self._arrays = (x_first, x_count, x_coef, y_first - self.row0, y_count, y_coef)  # alive
    self._args = (
        ctypes.c_int64(self.row0), ctypes.c_int64(self.rows), _pointer(x_first, _I32),
        _pointer(x_count, _I32), _pointer(x_coef, _I32), ctypes.c_int64(x_coef.shape[1]),
        ctypes.c_int64(size), _pointer(self._arrays[3], _I32), _pointer(y_count, _I32),
        _pointer(y_coef, _I32), ctypes.c_int64(y_coef.shape[1]), ctypes.c_int64(size))

  def __call__(self, frame: np.ndarray, flip: bool = False,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """``frame`` ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` into ``out`` (allocated when
    None), mirrored left-right if ``flip``."""
    size = self.size
    if out is None:
      out = np.empty((size, size, 3), np.uint8)
    if not self.native:
      image = Image.fromarray(frame).resize((size, size), Image.BILINEAR, box=self.box)
      if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
      out[...] = np.asarray(image)
      return out
    if not (frame.flags.c_contiguous and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3):
      frame = np.ascontiguousarray(frame, np.uint8)
    if not (out.flags.c_contiguous and out.shape == (size, size, 3) and out.dtype == np.uint8):
      raise ValueError(f"out must be a C-contiguous uint8 ({size}, {size}, 3) array")
    _State.library.kpsem_resample_rgb(
        _pointer(frame, _U8), ctypes.c_int64(frame.strides[0]), *self._args,
        ctypes.c_int32(int(flip)), _pointer(out, _U8), ctypes.c_int64(out.strides[0]))
    return out
