"""Max-pooling with its own gradient (the first maximum of each window, as XLA and PyTorch)."""

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp

from kpsem_jax.models import cpu_kernels as kernels_lib
from kpsem_jax.models.layers.convolution import Padding


def _window_values(x, window, strides, padding):
  """The values under each offset of a max-pooling window: one strided slice of the
  ``-inf``-padded ``x`` per offset, in row-major order of the offsets."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:-1], window, strides)]
  values = []
  for offset in itertools.product(*(range(k) for k in window)):
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out))
    values.append(xp[(slice(None), *index)])
  return values


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Padding, cpu_kernels: bool = False) -> jax.Array:
  """Max-pooling of ``(B, *spatial, C)`` over ``window`` with ``strides`` and ``padding``
  (one ``(low, high)`` pair per spatial axis, padded with ``-inf``): as ``flax.linen.max_pool``,
  gradient included (each output's gradient goes to its window's first maximum, in row-major
  order, as XLA's and PyTorch's), computed as an elementwise maximum of the window's strided
  slices, which XLA fuses into one pass (the gradient: one per stride phase); the forward
  keeps each output's first-maximum offset for the gradient. (XLA:CPU's own max-pool
  gradient, a variadic reduce-window over index arrays and a scatter, took a quarter of a
  narrow MFNet's training step: ``docs/speed.md``.) With ``cpu_kernels``, the gradient of a 3-D pooling is their C++
  one (``cpu_kernels.max_pool_grad``; XLA fused the one below with the producers of the
  output gradient and recomputed them once per window offset); the same values.

  Args:
    x: ``(B, *spatial, C)``, floating point.
    window, strides: one size per spatial axis.
    padding: one ``(low, high)`` pair per spatial axis.
    cpu_kernels: a 3-D pooling's gradient by :mod:`kpsem_jax.models.cpu_kernels` (see above).
  Returns:
    ``(B, *out_spatial, C)``.
  """
  values = _window_values(x, tuple(window), tuple(strides), tuple(map(tuple, padding)))
  return functools.reduce(jnp.maximum, values)


def _max_pool_fwd(x, window, strides, padding, cpu_kernels):
  values = _window_values(x, tuple(window), tuple(strides), tuple(map(tuple, padding)))
  y = functools.reduce(jnp.maximum, values)
  first = jnp.full(y.shape, len(values), jnp.int32)  # the first offset holding the maximum
  for k in reversed(range(len(values))):
    first = jnp.where(values[k] == y, k, first)
  return y, (x, first)


def _max_pool_bwd(window, strides, padding, cpu_kernels, residuals, dy):
  x, first = residuals
  window, strides = tuple(window), tuple(strides)
  if len(window) == 3 and cpu_kernels:
    dx = kernels_lib.max_pool_grad(dy, first, x.shape, window, strides, [p[0] for p in padding])
    return (dx.astype(x.dtype),)
  offsets = list(itertools.product(*(range(k) for k in window)))
  first = jax.lax.optimization_barrier(first)  # computed once, not inside every consumer
  # Offset k's gradients land on the padded input at o * stride + k. Offsets of one phase
  # (k mod stride) share a lattice, where they are plain shifts (k // stride) of each other:
  # sum them there, then spread each phase's lattice onto the input (interior padding).
  padded = [n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], padding)]
  lattice = [-(-n // s) for n, s in zip(padded, strides)]
  zero = jnp.zeros((), dy.dtype)
  dxp = None
  for phase in itertools.product(*(range(s) for s in strides)):
    total = None
    for k, offset in enumerate(offsets):
      if all(o % s == p for o, s, p in zip(offset, strides, phase)):
        shift = [(o // s, n - o // s - m, 0) for o, s, n, m in zip(offset, strides, lattice,
                                                                     first.shape[1:-1])]
        part = jax.lax.pad(jnp.where(first == k, dy, zero), zero,
                           ((0, 0, 0), *shift, (0, 0, 0)))
        total = part if total is None else total + part
    if total is None:
      continue
    spread = jax.lax.pad(total, zero, ((0, 0, 0), *(
        (p, n - p - (m - 1) * s - 1, s - 1) for p, n, m, s in zip(phase, padded, lattice, strides)),
        (0, 0, 0)))
    dxp = spread if dxp is None else dxp + spread
  index = tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, x.shape[1:-1]))
  return (dxp[(slice(None), *index)],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
