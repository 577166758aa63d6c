"""``layers.max_pool``: values and gradients equal a naive loop and Flax's ``max_pool``, with
the ``jnp`` gradient and with the C++ one (``cpu_kernels.max_pool_grad``)."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax.models import cpu_kernels, layers

KERNELS = [False, pytest.param(True, marks=pytest.mark.skipif(
    not cpu_kernels.available(),
    reason=f"CPU kernels not built: {cpu_kernels.unavailable_reason()}"))]

CASES = [  # (input (B, T, H, W, C), window, strides, padding): MFNet's and ResNet's stem first
    ((2, 3, 9, 10, 4), (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    ((1, 4, 6, 7, 3), (2, 2, 3), (2, 1, 2), ((0, 1), (0, 0), (1, 1))),
    ((2, 5, 5, 4, 17), (3, 2, 2), (1, 2, 1), ((1, 1), (1, 0), (0, 1))),  # overlap in time
]


def naive_max_pool_and_grad(x, dy, window, strides, padding):
  """Loops: each output is its window's maximum; its gradient goes to the window's first
  maximum in row-major order (padding never wins)."""
  b, *spatial, c = x.shape
  out = [(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(spatial, padding, window, strides)]
  y = np.full((b, *out, c), -np.inf, np.float32)
  dx = np.zeros_like(x)
  for n, ch in itertools.product(range(b), range(c)):
    for o in itertools.product(*(range(m) for m in out)):
      best, where = -np.inf, None
      for k in itertools.product(*(range(w) for w in window)):
        i = tuple(oi * s + ki - lo for oi, s, ki, (lo, _) in zip(o, strides, k, padding))
        if all(0 <= ii < nn_ for ii, nn_ in zip(i, spatial)) and x[(n, *i, ch)] > best:
          best, where = x[(n, *i, ch)], i
      y[(n, *o, ch)] = best
      dx[(n, *where, ch)] += dy[(n, *o, ch)]
  return y, dx


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_the_naive_loop_in_values_and_gradients(case, ties, kernels):
  shape, window, strides, padding = case
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape))
  if ties:  # post-ReLU zeros and repeated positive values: the first maximum must win
    x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
  fn = jax.jit(lambda x: layers.max_pool(x, window, strides, padding, kernels))
  y, pull = jax.vjp(fn, jnp.asarray(x))
  dy = np.asarray(jax.random.normal(jax.random.PRNGKey(1), y.shape))
  want_y, want_dx = naive_max_pool_and_grad(x, dy, window, strides, padding)
  np.testing.assert_array_equal(np.asarray(y), want_y)
  np.testing.assert_allclose(np.asarray(pull(jnp.asarray(dy))[0]), want_dx, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_equals_flax_max_pool_gradient_with_ties():
  shape, window, strides, padding = CASES[0]
  x = jnp.maximum(jnp.round(jax.random.normal(jax.random.PRNGKey(2), shape) * 2) / 2, 0)
  w = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 5, 5, 4))
  ours = jax.grad(lambda x: (layers.max_pool(x, window, strides, padding) * w).sum())(x)
  flax = jax.grad(lambda x: (nn.max_pool(x, window, strides=strides, padding=padding)
                             * w).sum())(x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(flax), rtol=1e-6, atol=1e-6)
