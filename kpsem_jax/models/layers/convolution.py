"""Convolution, channels-last and grouped, computed by one of several strategies.

:func:`conv` is the maths (forward and, for ``patches_grad``, its own gradient), :class:`Conv`
holds the kernel. Kernels use the ``(*spatial, in // groups, out)`` layout (DHWIO for 3-D),
so a PyTorch ``(out, in // groups, *spatial)`` weight ports with one transpose. Strategies
and their speeds: docs/speed.md.
"""

import functools
import itertools
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax.models import cpu_kernels

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
  """What ``conv_strategy="auto"`` computes a convolution with: a pure function of its inputs.

  ``xla`` on GPUs and TPUs (cuDNN's and TPU's convolutions are the fast ones there). On
  CPUs with :mod:`kpsem_jax.models.cpu_kernels` built: ``onednn``, except ``patches_grad`` for a
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


# What ``auto`` is resolved to on a CPU: per convolution, by shape (:func:`auto_strategy`),
# with or without the C++ kernels.
AUTO_ONEDNN, AUTO_XLA = "auto_onednn", "auto_xla"
RESOLVED = tuple(s for s in STRATEGIES if s != "auto") + (AUTO_ONEDNN, AUTO_XLA)


def _cpu_kernels_built() -> bool:
  return cpu_kernels.available()


def resolve_conv_strategy(conv_strategy: str) -> str:
  """A requested strategy made concrete, once, where the model is built (``create_model``):
  ``auto`` becomes ``xla`` on GPUs and TPUs, ``auto_onednn`` on CPUs where
  :mod:`kpsem_jax.models.cpu_kernels` builds, ``auto_xla`` on other CPUs; every other strategy is
  already concrete. The one place that asks for the backend and builds the kernels; the
  model's layers see only the result."""
  if conv_strategy not in STRATEGIES + (AUTO_ONEDNN, AUTO_XLA):
    raise ValueError(f"unknown convolution strategy {conv_strategy!r}; choose one of "
                     f"{STRATEGIES}")
  if conv_strategy != "auto":
    return conv_strategy
  if jax.default_backend() != "cpu":
    return "xla"
  return AUTO_ONEDNN if _cpu_kernels_built() else AUTO_XLA


def uses_cpu_kernels(conv_strategy: str) -> bool:
  """Whether a model built with ``conv_strategy`` runs :mod:`kpsem_jax.models.cpu_kernels` (oneDNN,
  BatchNorm's sums, the max-pool gradient, AReSE's regional argmax): ``onednn`` and
  ``auto_onednn``; every other strategy is pure XLA. ``auto`` is resolved first
  (:func:`resolve_conv_strategy`)."""
  return resolve_conv_strategy(conv_strategy) in ("onednn", AUTO_ONEDNN)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
         groups: int = 1, conv_strategy: str = "auto") -> jax.Array:
  """N-d grouped convolution, channels-last, PyTorch's zero padding.

  Args:
    x: ``(B, *spatial, C_in)``.
    kernel: ``(*kernel_spatial, C_in // groups, C_out)``.
    strides: one stride per spatial axis.
    padding: one ``(low, high)`` pair per spatial axis.
    groups: feature groups; ``C_in`` and ``C_out`` must both divide by it.
    conv_strategy: how XLA computes it; every strategy gives the same values (to float32
      rounding) and gradients. ``xla``: one grouped ``conv_general_dilated``;
      ``group_loop``: one dense convolution per group; ``patches``: im2col and a batched
      matmul; ``patches_grad``: the ``patches`` gradient (XLA:CPU's own convolution
      gradients are 2-30x slower, most of all for grouped and 3-input-channel layers) with
      the ``xla`` forward pass, or the ``patches`` one for groups of at most
      ``PATCHES_FORWARD_MAX_GROUP_WIDTH`` channels; ``onednn``: oneDNN's convolution
      through an XLA custom call, both passes (CPU only, :mod:`kpsem_jax.models.cpu_kernels`);
      ``auto``: :func:`resolve_conv_strategy` (``xla`` on GPUs and TPUs; on CPUs
      ``auto_onednn`` or ``auto_xla``, chosen per convolution by :func:`auto_strategy`).
  Returns:
    ``(B, *out_spatial, C_out)``.
  """
  conv_strategy = resolve_conv_strategy(conv_strategy)
  strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
  if conv_strategy in (AUTO_ONEDNN, AUTO_XLA):
    conv_strategy = auto_strategy(x, kernel, "cpu", conv_strategy == AUTO_ONEDNN)
  if conv_strategy == "patches_grad":
    return _cpu_conv(x, kernel.astype(x.dtype), strides, padding, groups)
  if conv_strategy == "onednn":
    return cpu_kernels.conv(x, kernel, strides, padding, groups)
  if conv_strategy == "xla":
    return _xla_conv(x, kernel, strides, padding, groups)
  if conv_strategy == "group_loop":
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
  conv_strategy: str = "auto"  # see :func:`conv`; create_model passes a resolved one
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
    y = conv(x, kernel, self.strides, padding, self.groups, self.conv_strategy)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y
