"""Small building blocks shared by the backbones: convolution, max-pooling and BatchNorm.

The maths is in the pure functions :func:`conv`, :func:`max_pool`, :func:`batch_norm_train`
and :func:`batch_norm_eval`; :class:`Conv` only holds the kernel, :class:`BatchNorm` its
scale, bias and running statistics.
Kernels use the ``(*spatial, in // groups, out)`` layout (DHWIO for 3-D), so a PyTorch
``(out, in // groups, *spatial)`` weight ports with one transpose.
"""

import functools
import itertools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax import cpu_kernels

# PyTorch's BatchNorm defaults: eps 1e-5, momentum 0.1 (Flax's momentum is 1 - that).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

Padding = Sequence[Tuple[int, int]]


STRATEGIES = ("auto", "xla", "group_loop", "patches", "patches_grad", "onednn")


def _xla_conv(x, kernel, strides, padding, groups):
  nd = kernel.ndim - 2
  spatial = "DHW"[-nd:]
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=tuple(strides), padding=tuple(padding),
      dimension_numbers=dn, feature_group_count=groups)


def _group_loop_conv(x, kernel, strides, padding, groups):
  """One dense convolution per group on its channel slice, concatenated."""
  if groups == 1:
    return _xla_conv(x, kernel, strides, padding, 1)
  c_in, c_out = x.shape[-1] // groups, kernel.shape[-1] // groups
  return jnp.concatenate(
      [_xla_conv(x[..., g * c_in:(g + 1) * c_in], kernel[..., g * c_out:(g + 1) * c_out],
                 strides, padding, 1) for g in range(groups)], axis=-1)


def _patches_conv(x, kernel, strides, padding, groups):
  """im2col, group-major: windows stacked ``(G, N, taps * C_in/g)``, one batched matmul.

  The group axis leads so that the matmul's batch axis is major and each group's patch
  row is contiguous (no transposes of the 27x-larger patch array).
  """
  window, c_in_g, c_out = kernel.shape[:-2], kernel.shape[-2], kernel.shape[-1]
  x = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in padding) + ((0, 0),))
  out_size = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, strides)]
  x = jnp.moveaxis(x.reshape(x.shape[:-1] + (groups, c_in_g)), -2, 0)  # (G, B, *sp, C_in/g)
  taps = []
  for offset in itertools.product(*(range(k) for k in window)):
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out_size))
    taps.append(x[(slice(None), slice(None)) + index])
  cols = jnp.stack(taps, axis=-2).reshape(groups, -1, len(taps) * c_in_g)
  k = kernel.astype(x.dtype).reshape(len(taps), c_in_g, groups, c_out // groups)
  k = k.transpose(2, 0, 1, 3).reshape(groups, len(taps) * c_in_g, c_out // groups)
  y = jnp.einsum("gnk,gko->ngo", cols, k)  # (N, G, C_out/g)
  return y.reshape((x.shape[1], *out_size, c_out))


# XLA:CPU computes a grouped convolution about as slowly as the dense one it stands for, so
# narrow groups lose most; at or below this many input channels per group the patches
# forward pass is the faster (benchmarks/conv_strategies.py: MFNet conv2, 6 per group).
PATCHES_FORWARD_MAX_GROUP_WIDTH = 8

# Without oneDNN, at or below this many input elements (batch included) ``auto`` takes plain
# XLA both ways on CPUs too: such convolutions run in well under a millisecond either way,
# and the patches gradient doubles XLA's compile time of a training step, which dominates
# at these sizes (tests, tiny models). MFNet's smallest convolution input at batch 1,
# 16x224x224 (conv5, 8x7x7x768) is more than 4x larger.
SMALL_CONV_MAX_ELEMENTS = 65536


def _cpu_forward(x, kernel, strides, padding, groups):
  if groups > 1 and kernel.shape[-2] <= PATCHES_FORWARD_MAX_GROUP_WIDTH:
    return _patches_conv(x, kernel, strides, padding, groups)
  return _xla_conv(x, kernel, strides, padding, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, kernel, strides, padding, groups):
  return _cpu_forward(x, kernel, strides, padding, groups)


def _auto_fwd(x, kernel, strides, padding, groups):
  return _cpu_forward(x, kernel, strides, padding, groups), (x, kernel)


def _auto_bwd(strides, padding, groups, residuals, cotangent):
  x, kernel = residuals  # the patches are rebuilt here, not kept from the forward pass
  _, vjp = jax.vjp(lambda a, b: _patches_conv(a, b, strides, padding, groups), x, kernel)
  return vjp(cotangent)


_cpu_conv.defvjp(_auto_fwd, _auto_bwd)


def auto_strategy(x: jax.Array, kernel: jax.Array, backend: str, cpu_kernels_built: bool) -> str:
  """What ``strategy="auto"`` computes a convolution with: a pure function of its inputs.

  ``xla`` on GPUs and TPUs (cuDNN's and TPU's convolutions are the fast ones there). On
  CPUs with :mod:`kpsem_jax.cpu_kernels` built: ``onednn``, except ``patches_grad`` for a
  pointwise (1x1x1) kernel, a matmul XLA does well and fuses with its neighbours (all of
  MFNet's pointwise layers through oneDNN made its batch-1 forward 19% slower:
  ``docs/speed.md``). On CPUs
  without them: ``xla`` up to ``SMALL_CONV_MAX_ELEMENTS`` input elements, else
  ``patches_grad``. Under ``jax.shard_map`` (the train step) the shapes are per device.
  """
  if backend != "cpu":
    return "xla"
  if cpu_kernels_built:
    pointwise = all(k == 1 for k in kernel.shape[:-2])
    return "patches_grad" if pointwise else "onednn"
  if x.size <= SMALL_CONV_MAX_ELEMENTS:
    return "xla"
  return "patches_grad"


def _cpu_kernels_built() -> bool:
  return jax.default_backend() == "cpu" and cpu_kernels.available()


def uses_cpu_kernels(strategy: str) -> bool:
  """Whether a model built with convolution ``strategy`` runs :mod:`kpsem_jax.cpu_kernels`
  (oneDNN and AReSE's regional argmax): ``onednn`` always, ``auto`` on CPUs where they are
  built; every other strategy is pure XLA."""
  if strategy == "onednn":
    return True
  return strategy == "auto" and _cpu_kernels_built()


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
         groups: int = 1, strategy: str = "auto") -> jax.Array:
  """N-d grouped convolution, channels-last, PyTorch's zero padding.

  Args:
    x: ``(B, *spatial, C_in)``.
    kernel: ``(*kernel_spatial, C_in // groups, C_out)``.
    strides: one stride per spatial axis.
    padding: one ``(low, high)`` pair per spatial axis.
    groups: feature groups; ``C_in`` and ``C_out`` must both divide by it.
    strategy: how XLA computes it; every strategy gives the same values (to float32
      rounding) and gradients. ``xla``: one grouped ``conv_general_dilated``;
      ``group_loop``: one dense convolution per group; ``patches``: im2col and a batched
      matmul; ``patches_grad``: the ``patches`` gradient (XLA:CPU's own convolution
      gradients are 2-30x slower, most of all for grouped and 3-input-channel layers) with
      the ``xla`` forward pass, or the ``patches`` one for groups of at most
      ``PATCHES_FORWARD_MAX_GROUP_WIDTH`` channels; ``onednn``: oneDNN's convolution
      through an XLA custom call, both passes (CPU only, :mod:`kpsem_jax.cpu_kernels`);
      ``auto``: chosen per convolution by :func:`auto_strategy` (``xla`` on GPUs and
      TPUs, ``onednn`` on CPUs where it is built).
  Returns:
    ``(B, *out_spatial, C_out)``.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown convolution strategy {strategy!r}; choose one of {STRATEGIES}")
  strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
  if strategy == "auto":
    strategy = auto_strategy(x, kernel, jax.default_backend(), _cpu_kernels_built())
  if strategy == "patches_grad":
    return _cpu_conv(x, kernel.astype(x.dtype), strides, padding, groups)
  if strategy == "onednn":
    return cpu_kernels.conv(x, kernel, strides, padding, groups)
  if strategy == "xla":
    return _xla_conv(x, kernel, strides, padding, groups)
  if strategy == "group_loop":
    return _group_loop_conv(x, kernel, strides, padding, groups)
  return _patches_conv(x, kernel, strides, padding, groups)


def same_padding(kernel_size: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
  """PyTorch's symmetric ``padding=k // 2`` for odd kernels."""
  return tuple((k // 2, k // 2) for k in kernel_size)


class Conv(nn.Module):
  """Bias-free grouped convolution holding only its kernel (see :func:`conv`)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1, 1)
  padding: Padding = None  # None: PyTorch-style k // 2 on every axis.
  groups: int = 1
  use_bias: bool = False
  strategy: str = "auto"  # see :func:`conv`
  kernel_init: nn.initializers.Initializer = nn.initializers.variance_scaling(
      2.0, "fan_out", "normal")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(
          f"{self.name}: channels {in_features} -> {self.features} do not divide "
          f"into {self.groups} groups")
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, in_features // self.groups, self.features))
    padding = same_padding(self.kernel_size) if self.padding is None else self.padding
    y = conv(x, kernel, self.strides, padding, self.groups, self.strategy)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y


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
             padding: Padding, strategy: str = "auto") -> jax.Array:
  """Max-pooling of ``(B, *spatial, C)`` over ``window`` with ``strides`` and ``padding``
  (one ``(low, high)`` pair per spatial axis, padded with ``-inf``): as ``flax.linen.max_pool``,
  gradient included (each output's gradient goes to its window's first maximum, in row-major
  order, as XLA's and PyTorch's), computed as an elementwise maximum of the window's strided
  slices, which XLA fuses into one pass (the gradient: one per stride phase); the forward
  keeps each output's first-maximum offset for the gradient. (XLA:CPU's own max-pool
  gradient, a variadic reduce-window over index arrays and a scatter, took a quarter of a
  narrow MFNet's training step: ``docs/speed.md``.) Where ``strategy`` (a ``layers.conv``
  strategy) runs :mod:`kpsem_jax.cpu_kernels`, the gradient of a 3-D pooling is their C++
  one (``cpu_kernels.max_pool_grad``; XLA fused the one below with the producers of the
  output gradient and recomputed them once per window offset); the same values.

  Args:
    x: ``(B, *spatial, C)``, floating point.
    window, strides: one size per spatial axis.
    padding: one ``(low, high)`` pair per spatial axis.
    strategy: see above.
  Returns:
    ``(B, *out_spatial, C)``.
  """
  values = _window_values(x, tuple(window), tuple(strides), tuple(map(tuple, padding)))
  return functools.reduce(jnp.maximum, values)


def _max_pool_fwd(x, window, strides, padding, strategy):
  values = _window_values(x, tuple(window), tuple(strides), tuple(map(tuple, padding)))
  y = functools.reduce(jnp.maximum, values)
  first = jnp.full(y.shape, len(values), jnp.int32)  # the first offset holding the maximum
  for k in reversed(range(len(values))):
    first = jnp.where(values[k] == y, k, first)
  return y, (x, first)


def _max_pool_bwd(window, strides, padding, strategy, residuals, dy):
  x, first = residuals
  window, strides = tuple(window), tuple(strides)
  if len(window) == 3 and uses_cpu_kernels(strategy):
    dx = cpu_kernels.max_pool_grad(dy, first, x.shape, window, strides, [p[0] for p in padding])
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


def _centred_scale(mean, var, scale, epsilon):
  """BatchNorm's per-channel multiplier ``a = scale / sqrt(var + eps)``:
  ``y = (x - mean) * a + bias``."""
  return scale * jax.lax.rsqrt(var + epsilon)


def _normalize(x, mean, a, bias, relu):
  y = (x - mean) * a + bias
  return jnp.maximum(y, 0) if relu else y


def batch_norm_eval(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                    bias: jax.Array, relu: bool = False, epsilon: float = BN_EPSILON) -> jax.Array:
  """BatchNorm with given statistics (running averages), ReLU after it with ``relu``.

  ``(x - mean) * (scale / sqrt(var + epsilon)) + bias`` over the last axis of
  ``x`` ``(..., C)``; mean, var, scale, bias ``(C,)``.
  """
  return _normalize(x, mean, _centred_scale(mean, var, scale, epsilon), bias, relu)


def _batch_statistics(sums, n, axis_name):
  """Mean and biased variance from ``(2, C)`` sums of x and x**2 over ``n`` rows."""
  means = sums / n
  if axis_name is not None:
    means = jax.lax.pmean(means, axis_name)
  mean, mean_of_squares = means[0], means[1]
  return mean, jnp.maximum(0.0, mean_of_squares - mean * mean)


def _rows(x):
  return x.size // x.shape[-1]


def _batch_norm_forward(x, sums, scale, bias, relu, epsilon, axis_name):
  """``(y, mean, var)`` from the ``(2, C)`` sums of x and x**2 over this call's rows."""
  mean, var = _batch_statistics(sums, _rows(x), axis_name)
  return _normalize(x, mean, _centred_scale(mean, var, scale, epsilon), bias, relu), mean, var


def _batch_norm_train_xla(x, scale, bias, relu, epsilon, axis_name):
  x32 = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  sums = jnp.stack([jnp.sum(x32, axis=axes), jnp.sum(x32 * x32, axis=axes)])
  return _batch_norm_forward(x, sums, scale, bias, relu, epsilon, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_train_kernels(x, scale, bias, relu, epsilon, axis_name):
  return _batch_norm_train_kernels_fwd(x, scale, bias, relu, epsilon, axis_name)[0]


def _batch_norm_train_kernels_fwd(x, scale, bias, relu, epsilon, axis_name):
  y, mean, var = _batch_norm_forward(x, cpu_kernels.batch_norm_sums(x), scale, bias, relu,
                                     epsilon, axis_name)
  return (y, mean, var), (x, mean, var, scale, bias)


def _batch_norm_train_kernels_bwd(relu, epsilon, axis_name, residuals, cotangents):
  # y = (x - mean) * a + bias (then ReLU), a = scale * inv, inv = (var + eps)^-1/2, with
  # the statistics of all N rows (every device's). With dz the gradient before the ReLU,
  # S1 = sum dz and S2 = sum dz (x - mean) over all N rows:
  #   dx = a dz - a S1 / N - (x - mean) a inv^2 S2 / N,
  #   dscale = inv * (this device's S2), dbias = this device's S1.
  # The statistics outputs carry no gradient (they feed the running averages only).
  x, mean, var, scale, bias = residuals
  dy = cotangents[0]
  inv = jax.lax.rsqrt(var + epsilon)
  a = scale * inv
  local = cpu_kernels.batch_norm_grad_sums(x, dy, mean, a, bias, relu)
  total, n = local, _rows(x)
  if axis_name is not None:
    total, n = jax.lax.psum(local, axis_name), n * jax.lax.psum(1, axis_name)
  s1, s2 = total[0] / n, total[1] / n
  open_ = ((x - mean) * a + bias > 0) if relu else True
  dz = jnp.where(open_, dy, 0)
  dx = a * (dz - s1) - (x - mean) * (a * inv * inv * s2)
  dscale = cpu_kernels.shard_typed(local[1] * inv, (x, dy), like=scale)
  dbias = cpu_kernels.shard_typed(local[0], (x, dy), like=bias)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_batch_norm_train_kernels.defvjp(_batch_norm_train_kernels_fwd, _batch_norm_train_kernels_bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, relu: bool = False,
                     epsilon: float = BN_EPSILON, axis_name: Optional[str] = None,
                     strategy: str = "auto") -> Tuple[jax.Array, jax.Array, jax.Array]:
  """BatchNorm with the statistics of this batch, ReLU after it with ``relu``.

  Args:
    x: ``(..., C)``; statistics over every axis but the last.
    scale, bias: ``(C,)``.
    axis_name: under ``jax.shard_map``, the mesh axis whose devices share their statistics
      (``lax.pmean`` of the means and means of squares, as PyTorch's SyncBatchNorm); None:
      this call's batch only.
    strategy: a ``layers.conv`` strategy; where it runs :mod:`kpsem_jax.cpu_kernels`
      (:func:`uses_cpu_kernels`), the per-channel sums of both passes are the C++ ones
      (XLA:CPU's took about 40 of the 135 ms of a narrow MFNet's training step) with a
      hand-written gradient;
      elsewhere ``jnp`` sums and JAX's autodiff. Both give the same values and gradients.
  Returns:
    ``(y, mean, var)``: ``y`` shaped as ``x``; the batch mean and biased variance ``(C,)``,
    without gradient (for the running averages).
  """
  forward = _batch_norm_train_kernels if uses_cpu_kernels(strategy) else _batch_norm_train_xla
  y, mean, var = forward(x, scale, bias, relu, epsilon, axis_name)
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's eps and momentum, ReLU after it with ``relu``.

  Variables as ``flax.linen.BatchNorm``'s (params ``scale``, ``bias``; ``batch_stats``
  ``mean``, ``var``), so checkpoints and the PyTorch converter see the same names. In
  training, :func:`batch_norm_train` (``axis_name``, ``strategy``: see there) and the
  running averages updated with momentum ``BN_MOMENTUM``; otherwise
  :func:`batch_norm_eval` with the running averages. One difference from PyTorch: the
  running variance is updated with the biased batch variance (PyTorch uses the unbiased
  one), as Flax does.
  """
  relu: bool = False
  axis_name: Optional[str] = None
  strategy: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if not train:
      return batch_norm_eval(x, ra_mean.value, ra_var.value, scale, bias, self.relu)
    y, mean, var = batch_norm_train(x, scale, bias, self.relu, BN_EPSILON, self.axis_name,
                                    self.strategy)
    if not self.is_initializing():
      ra_mean.value = BN_MOMENTUM * ra_mean.value + (1 - BN_MOMENTUM) * mean
      ra_var.value = BN_MOMENTUM * ra_var.value + (1 - BN_MOMENTUM) * var
    return y
