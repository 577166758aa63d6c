"""Small building blocks shared by the backbones: convolution and BatchNorm.

The maths is in the pure function :func:`conv`; :class:`Conv` only holds the kernel.
Kernels use the ``(*spatial, in // groups, out)`` layout (DHWIO for 3-D), so a PyTorch
``(out, in // groups, *spatial)`` weight ports with one transpose.
"""

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm defaults: eps 1e-5, momentum 0.1 (Flax's momentum is 1 - that).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

Padding = Sequence[Tuple[int, int]]


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
         groups: int = 1) -> jax.Array:
  """N-d grouped convolution, channels-last, PyTorch's zero padding.

  Args:
    x: ``(B, *spatial, C_in)``.
    kernel: ``(*kernel_spatial, C_in // groups, C_out)``.
    strides: one stride per spatial axis.
    padding: one ``(low, high)`` pair per spatial axis.
    groups: feature groups; ``C_in`` and ``C_out`` must both divide by it.
  Returns:
    ``(B, *out_spatial, C_out)``.
  """
  nd = kernel.ndim - 2
  spatial = "DHW"[-nd:] if nd <= 3 else None
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=tuple(strides), padding=tuple(padding),
      dimension_numbers=dn, feature_group_count=groups)


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
    y = conv(x, kernel, self.strides, padding, self.groups)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y


def batch_norm(train: bool, name: str = "bn") -> nn.BatchNorm:
  """BatchNorm over the last axis with PyTorch's eps and momentum.

  Under ``jax.jit`` with a batch-sharded input the statistics are those of the global
  batch, as with PyTorch's SyncBatchNorm. One difference from PyTorch: Flax updates the
  running variance with the biased batch variance (PyTorch uses the unbiased one).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, name=name)
