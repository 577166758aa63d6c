"""A deliberately plain AReSE: Python loops over frames, regions, channels and pixels.

Written from the paper's equations (4-12) and the choices documented in
``kpsem_jax/models/arese.py``, sharing no code with it, to check the vectorised version.
"""

import math

import numpy as np


def _sigmoid(z):
  return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _splits(logits):
  """k-1 ordered split positions from k-1 logits (softmax over [0, logits], cumsum)."""
  z = [0.0] + [float(v) for v in logits]
  e = [math.exp(v - max(z)) for v in z]
  total = sum(e)
  out, acc = [], 0.0
  for v in e[:-1]:
    acc += v / total
    out.append(-1.0 + 2.0 * acc)
  return out


def _membership(coord, lower, upper, tau):
  """Soft membership of a coordinate in [lower, upper); None bounds are open."""
  def right_of(s):
    if s is None:
      return 1.0
    return _sigmoid((coord - s) / tau) if tau > 0 else float(coord >= s)
  return right_of(lower) - (0.0 if upper is None else right_of(upper))


def _coord(i, n):
  return (2.0 * i + 1.0) / n - 1.0


def naive_arese(features, split_logits, temperature=0.1, epsilon=0.1):
  """features (T, H, W, C), split_logits (T, 2, k-1) -> rkps (T-1, C, 2) and parts."""
  f = np.asarray(features, np.float64)
  T, H, W, C = f.shape
  k = split_logits.shape[-1] + 1
  K = k * k
  masks = np.zeros((T, K, H, W))
  for t in range(T):
    sx = _splits(split_logits[t, 0])
    sy = _splits(split_logits[t, 1])
    bx = [None] + sx + [None]
    by = [None] + sy + [None]
    for i in range(k):
      for j in range(k):
        for h in range(H):
          for w in range(W):
            masks[t, i * k + j, h, w] = (
                _membership(_coord(h, H), by[i], by[i + 1], temperature * 2.0 / H)
                * _membership(_coord(w, W), bx[j], bx[j + 1], temperature * 2.0 / W))
  coords = np.zeros((T, K, C, 2))
  values = np.zeros((T, K, C))
  for t in range(T):
    for c in range(C):
      span = f[t, :, :, c].max() - f[t, :, :, c].min() + 1.0
      for r in range(K):
        best, best_hw = -np.inf, None
        for h in range(H):
          for w in range(W):
            score = f[t, h, w, c] - (1.0 - masks[t, r, h, w]) * span
            if score > best:
              best, best_hw = score, (h, w)
        values[t, r, c] = best
        coords[t, r, c] = (_coord(best_hw[1], W), _coord(best_hw[0], H))
  shifts = np.zeros((T - 1, K, C, 2))
  for t in range(T - 1):
    for c in range(C):
      for a in range(K):
        aff = [1.0 / (abs(values[t, a, c] - values[t + 1, b, c]) + epsilon) for b in range(K)]
        m = max(aff)
        wts = [math.exp(v - m) for v in aff]
        wts = [v / sum(wts) for v in wts]
        for b in range(K):
          shifts[t, a, c] += wts[b] * (coords[t + 1, b, c] - coords[t, a, c])
  means = np.zeros((T, K, C))
  for t in range(T):
    for r in range(K):
      for c in range(C):
        means[t, r, c] = (masks[t, r] * f[t, :, :, c]).sum() / (masks[t, r].sum() + 1e-6)
  rkps = np.zeros((T - 1, C, 2))
  for t in range(T - 1):
    for c in range(C):
      pooled = [(means[t, r, c] + means[t + 1, r, c]) / 2.0 for r in range(K)]
      m = max(pooled)
      e = [math.exp(v - m) for v in pooled]
      for r in range(K):
        rkps[t, c] += e[r] / sum(e) * shifts[t, r, c]
  return {"rkps": rkps, "coords": coords, "values": values, "shifts": shifts}


def naive_centre_mlp(features, w1, b1, w2, b2):
  """Per frame: mean over H, W -> Dense -> ReLU -> Dense; (T, 2, k-1)."""
  f = np.asarray(features, np.float64)
  out = []
  for t in range(f.shape[0]):
    pooled = f[t].mean(axis=(0, 1))
    hidden = np.maximum(0.0, pooled @ np.asarray(w1, np.float64) + np.asarray(b1, np.float64))
    out.append(hidden @ np.asarray(w2, np.float64) + np.asarray(b2, np.float64))
  return np.asarray(out).reshape(f.shape[0], 2, -1)
