"""A float64 BatchNorm (+ ReLU) and its gradients written out, and random inputs for it."""

import numpy as np

from kpsem_jax.models import layers


def inputs(shape=(3, 4, 5, 6, 24), seed=0):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c))
  scale, bias = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
  w = rng.standard_normal(shape)  # the loss is sum(y * w)
  return [np.asarray(a, np.float32) for a in (x, scale, bias, w)]


def reference(x, scale, bias, w, relu, eps=layers.BN_EPSILON):
  """float64 BatchNorm (+ ReLU) and the gradients of sum(y * w), written out."""
  x, scale, bias, w = (np.asarray(a, np.float64) for a in (x, scale, bias, w))
  rows = x.reshape(-1, x.shape[-1])
  n = rows.shape[0]
  mean, var = rows.mean(0), rows.var(0)
  inv = 1 / np.sqrt(var + eps)
  xhat = (x - mean) * inv
  pre = xhat * scale + bias
  y = np.maximum(pre, 0) if relu else pre
  dz = w * (pre > 0) if relu else w
  s1, s2 = dz.reshape(n, -1).sum(0), (dz * xhat).reshape(n, -1).sum(0)
  dx = scale * inv * (dz - s1 / n - xhat * s2 / n)
  return y, mean, var, dx, s2, s1
