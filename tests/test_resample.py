"""kpsem_jax.data.resample: Pillow's bilinear crop resampling in C++, byte for byte."""

import numpy as np
import pytest
from PIL import Image

from kpsem_jax.data import resample


def pillow(frame, box, size, flip):
  image = Image.fromarray(frame).resize((size, size), Image.BILINEAR, box=box)
  return np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image)


@pytest.fixture(scope="module")
def frames():
  """Smooth content plus noise and hard edges: every rounding path gets exercised."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:97, 0:131]
  base = 127 + 100 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]
  noisy = base + rng.normal(0, 30, (97, 131, 3))
  edges = np.where((xx // 9 + yy // 7) % 2 == 0, 255, 0)[..., None].repeat(3, -1)
  return [np.clip(noisy, 0, 255).astype(np.uint8), edges.astype(np.uint8)]


def test_the_coefficients_sum_to_one_in_fixed_point_and_stay_inside_the_frame():
  for start, end, size in ((0.0, 131.0, 64), (10.3, 60.9, 112), (3.7, 41.2, 17)):
    first, count, weights = resample.coefficients(131, start, end, size)
    assert (first >= 0).all() and (first + count <= 131).all() and (count >= 1).all()
    sums = weights.sum(axis=1)
    assert np.abs(sums - (1 << resample.PRECISION_BITS)).max() <= weights.shape[1]
    assert (weights[np.arange(weights.shape[1])[None, :] >= count[:, None]] == 0).all()


@pytest.mark.skipif(not resample.available(),
                    reason=f"the C++ resampler is not built: {resample.unavailable_reason()}")
def test_the_cpp_crop_equals_pillow_byte_for_byte(frames):
  rng = np.random.default_rng(1)
  for trial in range(120):
    frame = frames[trial % 2]
    h, w = frame.shape[:2]
    size = int(rng.integers(8, 80))
    box_w = rng.uniform(0.4 * size, min(w, 2.5 * size))  # up- and downscaling
    box_h = rng.uniform(0.4 * size, min(h, 2.5 * size))
    left, top = rng.uniform(0, w - box_w), rng.uniform(0, h - box_h)
    box = (left, top, left + box_w, top + box_h)
    if trial % 5 == 0:  # whole pixels, the edges of the frame
      box = (0.0, float(int(top)), float(w), float(int(top + box_h)))
    flip = bool(trial % 2)
    got = resample.Crop(frame.shape, box, size)(frame, flip)
    np.testing.assert_array_equal(got, pillow(frame, box, size, flip), err_msg=f"{box} {size}")


def test_pillow_stands_in_with_the_same_bytes_and_out_is_checked(frames):
  frame, box = frames[0], (5.5, 3.25, 70.0, 60.0)
  fallback = resample.Crop(frame.shape, box, 32, native=False)
  out = np.zeros((32, 32, 3), np.uint8)
  assert fallback(frame, True, out) is out
  np.testing.assert_array_equal(out, pillow(frame, box, 32, True))
  if resample.available():
    with pytest.raises(ValueError, match="C-contiguous uint8"):
      resample.Crop(frame.shape, box, 32)(frame, False, np.zeros((32, 32, 4), np.uint8))
