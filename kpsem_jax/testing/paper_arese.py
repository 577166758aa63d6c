"""AReSE as the paper prints it (Eq. 6-12), hard regions, written without our choices.

Deliberately literal, loops over frames, regions, channels and pixels, float64, sharing no
code or interpretive choice with ``kpsem_jax/models/arese.py`` beyond what the equations fix:

- regions are hard: a pixel belongs to the region whose split lines enclose its centre
  (lines are given as positions, no MLP, no logits, no soft masks);
- Eq. 6-7: the key point of a region is its maximum, ``V`` the feature value there (no
  penalty term);
- Eq. 8-10: ``S[i, a] = sum_b softmax_b(1 / (|V[i, a] - V[i+1, b]| + 0.1)) * (I[i+1, b] -
  I[i, a])``;
- Eq. 11: ``W_R = softmax_K(mean over adjacent frames of the region's mean)``;
- Eq. 12: ``RKPS = W_R * S`` per region (``(T-1, K, C, 2)``); the sum over K that our
  module takes is left to the caller.

Coordinates are pixel centres in ``[-1, 1]`` (``x_w = (2w + 1) / W - 1``) and a key point is
``(x, y)``; the paper fixes neither, so these follow the module's units to be comparable.
"""

import math

import numpy as np


def _centre(i: int, n: int) -> float:
  return (2.0 * i + 1.0) / n - 1.0


def _interval(coord: float, lines) -> int:
  """Which of the ``len(lines) + 1`` intervals cut by ordered ``lines`` holds ``coord``."""
  return sum(1 for s in lines if coord >= s)


def paper_arese(features, splits_x, splits_y, epsilon: float = 0.1):
  """features ``(T, H, W, C)``, split lines ``(T, k-1)`` per axis (positions in ``[-1, 1]``).

  Returns a dict: ``coords`` ``(T, K, C, 2)``, ``values`` ``(T, K, C)``, ``shifts``
  ``(T-1, K, C, 2)``, ``region_weights`` ``(T-1, K, C)``, ``rkps_per_region``
  ``(T-1, K, C, 2)``. Raises ``ValueError`` when a region holds no pixel (Eq. 6 is then
  undefined)."""
  f = np.asarray(features, np.float64)
  t_len, height, width, channels = f.shape
  k = np.asarray(splits_x).shape[-1] + 1
  regions = k * k
  coords = np.zeros((t_len, regions, channels, 2))
  values = np.zeros((t_len, regions, channels))
  means = np.zeros((t_len, regions, channels))
  for t in range(t_len):
    members = [[] for _ in range(regions)]  # (h, w) pixels of each region, row-major
    for h in range(height):
      for w in range(width):
        row = _interval(_centre(h, height), splits_y[t])
        col = _interval(_centre(w, width), splits_x[t])
        members[row * k + col].append((h, w))
    for r, pixels in enumerate(members):
      if not pixels:
        raise ValueError(f"frame {t}: region {r} holds no pixel")
      for c in range(channels):
        best = max(pixels, key=lambda hw: (f[t, hw[0], hw[1], c], -hw[0], -hw[1]))
        coords[t, r, c] = (_centre(best[1], width), _centre(best[0], height))
        values[t, r, c] = f[t, best[0], best[1], c]
        means[t, r, c] = sum(f[t, h, w, c] for h, w in pixels) / len(pixels)
  shifts = np.zeros((t_len - 1, regions, channels, 2))
  region_weights = np.zeros((t_len - 1, regions, channels))
  for i in range(t_len - 1):
    for c in range(channels):
      for a in range(regions):
        scores = [1.0 / (abs(values[i, a, c] - values[i + 1, b, c]) + epsilon)
                  for b in range(regions)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for b in range(regions):
          shifts[i, a, c] += weights[b] / total * (coords[i + 1, b, c] - coords[i, a, c])
      pooled = [(means[i, r, c] + means[i + 1, r, c]) / 2.0 for r in range(regions)]
      top = max(pooled)
      weights = [math.exp(p - top) for p in pooled]
      for r in range(regions):
        region_weights[i, r, c] = weights[r] / sum(weights)
  return dict(coords=coords, values=values, shifts=shifts, region_weights=region_weights,
              rkps_per_region=region_weights[..., None] * shifts)
