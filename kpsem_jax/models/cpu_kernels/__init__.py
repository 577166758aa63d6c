"""CPU kernels built on first use: oneDNN convolutions, AReSE's regional argmax, BatchNorm's
sums and the max-pooling gradient.

XLA:CPU's own 3-D convolutions run 3-100x slower than PyTorch's on CPUs (docs/speed.md, "Speed
against PyTorch"); PyTorch calls oneDNN for them. This module compiles a small XLA FFI
extension against the oneDNN of the ``onednn-devel-cpu-gomp`` wheel (``requirements.txt``,
x86-64 Linux) and the headers jaxlib ships, caches the shared library, registers its
handlers with XLA, and wraps them as :func:`conv` with its gradient (``onednn_conv.cc``)
and :func:`regional_argmax` (``regional_argmax.cc``: XLA's variadic argmax reduction over
a non-minor axis took 26 ms on MFNet's conv4 map, the vectorised loop 2.5 ms), and
:func:`batch_norm_sums` and :func:`batch_norm_grad_sums` (``batch_norm.cc``: BatchNorm's
per-channel sums in training, which XLA:CPU reduces at 2-9 GB/s), and :func:`max_pool_grad`
(``max_pool.cc``: XLA:CPU fused that gradient with its input's producers and recomputed them
once per window offset).

Building (``g++`` against oneDNN and jaxlib's headers, cached) is :mod:`.build`; this
module holds the JAX wrappers of the ops. Where it cannot be built (no C++ compiler, no oneDNN, another platform) :func:`available`
is False, :func:`unavailable_reason` says why, and ``layers.conv(conv_strategy="auto")`` keeps
to pure-XLA strategies. Environment:
- ``KPSEM_JAX_ONEDNN=0``: do not build or use it;
- ``KPSEM_JAX_ONEDNN_ROOT``: a oneDNN install (``include/``, ``lib/``) to use instead;
- ``KPSEM_JAX_CACHE``: where the built library goes (default ``~/.cache/kpsem_jax``);
- ``CXX``: the C++ compiler (default ``g++``, then ``c++``).
"""

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from kpsem_jax.models.cpu_kernels.build import available, require, unavailable_reason

__all__ = ["available", "unavailable_reason", "conv", "regional_argmax", "batch_norm_sums",
           "batch_norm_grad_sums", "max_pool_grad", "shard_typed"]

Padding = Tuple[Tuple[int, int], ...]


def _varying_axes(*arrays) -> Tuple[str, ...]:
  """The ``jax.shard_map`` mesh axes any of ``arrays`` varies over (empty outside one)."""
  axes = set()
  for a in arrays:
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)
    axes |= set(manual.varying if manual is not None else getattr(aval, "vma", ()))
  return tuple(sorted(axes))


def shard_typed(value, computed_from, like=None):
  """A custom call's output (or a value computed from one), typed for ``jax.shard_map``.

  XLA types a custom call's output as the same on every device; it is computed per device
  from ``computed_from``, so it varies over their axes. With ``like`` (the primal input a
  gradient belongs to): summed over the axes ``like`` does not vary over (the gradient of a
  value the devices share is the sum of theirs) and cast varying over the ones it does.
  """
  have = tuple(a for a in _varying_axes(*computed_from) if a not in _varying_axes(value))
  if have:
    value = jax.lax.pcast(value, have, to="varying")
  if like is None:
    return value
  have, want = _varying_axes(value), _varying_axes(like)
  extra = tuple(a for a in have if a not in want)
  if extra:
    value = jax.lax.psum(value, extra)
  missing = tuple(a for a in want if a not in have)
  if missing:
    value = jax.lax.pcast(value, missing, to="varying")
  return value


def _call(name, out_shape, a, b, strides, padding, groups, like=None, dtype=jnp.float32):
  out = jax.ffi.ffi_call(f"kpsem_onednn_conv_{name}",
                          jax.ShapeDtypeStruct(out_shape, dtype),
                          vmap_method="sequential")(
      a, b, strides=np.asarray(strides, np.int64),
      pad_lo=np.asarray([p[0] for p in padding], np.int64),
      pad_hi=np.asarray([p[1] for p in padding], np.int64), groups=np.int64(groups))
  return shard_typed(out, (a, b), like)


def _out_shape(x_shape, kernel_shape, strides, padding):
  spatial = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
             in zip(x_shape[1:-1], kernel_shape[:-2], strides, padding)]
  return (x_shape[0], *spatial, kernel_shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv3d(x, kernel, strides, padding, groups):
  return _call("forward", _out_shape(x.shape, kernel.shape, strides, padding), x, kernel,
               strides, padding, groups)


def _conv3d_fwd(x, kernel, strides, padding, groups):
  return _conv3d(x, kernel, strides, padding, groups), (x, kernel)


def _conv3d_bwd(strides, padding, groups, residuals, dy):
  x, kernel = residuals
  return (_call("input_grad", x.shape, dy, kernel, strides, padding, groups, like=x),
          _call("kernel_grad", kernel.shape, x, dy, strides, padding, groups, like=kernel))


_conv3d.defvjp(_conv3d_fwd, _conv3d_bwd)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
         groups: int = 1) -> jax.Array:
  """``layers.conv`` through oneDNN: float32, 1 to 3 spatial axes, channels-last; ``x`` and
  ``kernel`` both bfloat16 run oneDNN's bfloat16 forward (inference only: it has no
  gradient), any other pair is computed in float32.

  Args:
    x: ``(B, *spatial, C_in)``.
    kernel: ``(*kernel_spatial, C_in // groups, C_out)``.
    strides: one per spatial axis; padding: one ``(low, high)`` pair per spatial axis.
  Returns:
    ``(B, *out_spatial, C_out)`` in ``x``'s dtype (float32 computed in float32; bfloat16
    accumulated in float32).
  Raises:
    RuntimeError: when the extension is unavailable (the reason is in the message).
  """
  if not available():
    raise RuntimeError(f"the oneDNN convolution is unavailable: {unavailable_reason()}")
  nd = kernel.ndim - 2
  if not 1 <= nd <= 3 or x.ndim != nd + 2:
    raise ValueError(f"oneDNN conv: {x.ndim}-d input with a {kernel.ndim}-d kernel; expected "
                     "1 to 3 spatial axes")
  # Leading size-1 spatial axes make every convolution a 3-D one.
  lead = 3 - nd
  # Both in bfloat16 (bf16 inference casts the weights): oneDNN's bf16 forward. Otherwise
  # float32 with its gradient, whatever x's dtype (bf16 training keeps float32 kernels).
  both_bf16 = x.dtype == jnp.bfloat16 and kernel.dtype == jnp.bfloat16
  dtype = jnp.bfloat16 if both_bf16 else jnp.float32
  x3 = x.astype(dtype).reshape(x.shape[:1] + (1,) * lead + x.shape[1:])
  k3 = kernel.astype(dtype).reshape((1,) * lead + kernel.shape)
  strides3, padding3 = (1,) * lead + tuple(strides), ((0, 0),) * lead + tuple(padding)
  if dtype == jnp.bfloat16:
    y = _call("forward_bf16", _out_shape(x3.shape, k3.shape, strides3, padding3), x3, k3,
              strides3, padding3, groups, dtype=jnp.bfloat16)
  else:
    y = _conv3d(x3, k3, strides3, padding3, groups)
  return y.reshape(y.shape[:1] + y.shape[1 + lead:]).astype(x.dtype)


def regional_argmax(features: jax.Array, masks: jax.Array, penalty: jax.Array) -> jax.Array:
  """``argmax_P(features - (1 - masks) * penalty)`` per region and channel, on the CPU.

  The regional argmax of AReSE's key points (``arese.regional_argmax`` is the ``jnp``
  definition). Any leading axes broadcast; under ``jax.vmap`` unbatched inputs are not
  copied. Not differentiable (indices): callers stop gradients.

  Args:
    features: ``(*L, T, P, C)``; masks: ``(*L, T, K, P)``; penalty: ``(*L, T, C)``.
  Returns:
    ``(*L, T, K, C)`` int32: the first maximum's P index (the first NaN's, if any).
  Raises:
    RuntimeError: when the extension is unavailable (the reason is in the message).
  """
  require()
  features, masks, penalty = (jnp.asarray(a, jnp.float32) for a in (features, masks, penalty))
  (t, p, c), k = features.shape[-3:], masks.shape[-2]
  if masks.shape[-3:] != (t, k, p) or penalty.shape[-2:] != (t, c):
    raise ValueError(f"regional_argmax: features {features.shape}, masks {masks.shape} and "
                     f"penalty {penalty.shape} do not match (T, P, C), (T, K, P), (T, C)")
  lead = jnp.broadcast_shapes(features.shape[:-3], masks.shape[:-3], penalty.shape[:-2])
  features = features.reshape((1,) * (len(lead) - features.ndim + 3) + features.shape)
  masks = masks.reshape((1,) * (len(lead) - masks.ndim + 3) + masks.shape)
  penalty = penalty.reshape((1,) * (len(lead) - penalty.ndim + 2) + penalty.shape)
  out = jax.ffi.ffi_call("kpsem_regional_argmax",
                         jax.ShapeDtypeStruct(lead + (t, k, c), jnp.int32),
                         vmap_method="expand_dims")(features, masks, penalty)
  return shard_typed(out, (features, masks, penalty))



def batch_norm_sums(x: jax.Array) -> jax.Array:
  """Per-channel ``[sum x, sum x**2]`` over every axis but the last: ``(..., C) -> (2, C)``.

  float32 (computed with float64 totals). Not differentiable: ``layers.batch_norm_train``
  gives the gradient.
  """
  require()
  x = jnp.asarray(x, jnp.float32)
  out = jax.ffi.ffi_call("kpsem_batch_norm_sums",
                         jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32),
                         vmap_method="sequential")(x)
  return shard_typed(out, (x,))


def batch_norm_grad_sums(x: jax.Array, dy: jax.Array, mean: jax.Array, a: jax.Array,
                         bias: jax.Array, relu: bool) -> jax.Array:
  """``[sum dz, sum dz * (x - mean)]`` per channel over every axis but the last.

  ``dz`` is ``dy``, or with ``relu`` ``dy`` where ``(x - mean) * a + bias > 0`` and 0
  elsewhere (the gradient through the ReLU of BatchNorm's output).

  Args:
    x, dy: ``(..., C)``, the same shape; mean, a, bias: ``(C,)``.
  Returns:
    ``(2, C)`` float32.
  """
  require()
  x, dy = jnp.asarray(x, jnp.float32), jnp.asarray(dy, jnp.float32)
  coefs = jnp.stack([mean, a, bias]).astype(jnp.float32)
  out = jax.ffi.ffi_call("kpsem_batch_norm_grad_sums",
                         jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32),
                         vmap_method="sequential")(x, dy, coefs, relu=np.int64(bool(relu)))
  return shard_typed(out, (x, dy, coefs))


def max_pool_grad(dy: jax.Array, first: jax.Array, x_shape: Sequence[int], window: Sequence[int],
                  strides: Sequence[int], pad_lo: Sequence[int]) -> jax.Array:
  """The input gradient of a 3-D max-pooling, given each output's first maximum.

  Args:
    dy: ``(B, D', H', W', C)``, the output gradient.
    first: ``(B, D', H', W', C)`` int32, the row-major offset in its window of each output's
      first maximum (``layers.max_pool``'s residual); ``prod(window)`` or more: none.
    x_shape: ``(B, D, H, W, C)``; window, strides, pad_lo: 3 each (the low padding).
  Returns:
    ``dx`` ``x_shape``, float32: each input gets the ``dy`` of the outputs whose first
    maximum it is.
  """
  require()
  dy = jnp.asarray(dy, jnp.float32)
  out = jax.ffi.ffi_call("kpsem_max_pool_grad", jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32),
                         vmap_method="sequential")(
      dy, jnp.asarray(first, jnp.int32), window=np.asarray(window, np.int64),
      strides=np.asarray(strides, np.int64), pad_lo=np.asarray(pad_lo, np.int64))
  return shard_typed(out, (dy, first))
