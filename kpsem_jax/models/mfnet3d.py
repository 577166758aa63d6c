"""MFNet-3D (Chen et al., ECCV 2018), exactly as the original PyTorch release.

Parameter paths mirror the PyTorch ``state_dict`` keys: ``conv4.B03.conv_m1.conv.weight``
is ``conv4/B03/conv_m1/conv/kernel`` here, ``conv4.B03.conv_m1.bn.weight`` is
``.../bn/scale``, running statistics live in ``batch_stats``. Input ``(B, T, H, W, 3)``;
for the paper's 16x224x224 the stage outputs are conv1 16x112x112x16, conv2 8x56x56x96,
conv3 8x28x28x192, conv4 8x14x14x384, conv5 8x7x7x768.
"""

import functools
from typing import Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax.models.layers import BatchNorm, Conv, max_pool

STAGES = ("conv2", "conv3", "conv4", "conv5")


class BNReLUConv(nn.Module):
  """``BN_AC_CONV3D``: BatchNorm -> ReLU -> bias-free Conv3d."""
  features: int
  kernel_size: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  groups: int = 1
  conv_strategy: str = "auto"  # layers.conv's strategy
  batch_norm_axis: Optional[str] = None  # layers.BatchNorm's batch_norm_axis
  cpu_kernels: bool = False  # BatchNorm's sums by kpsem_jax.models.cpu_kernels

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = BatchNorm(relu=True, batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels,
                  name="bn")(x, train)
    return Conv(self.features, self.kernel_size, self.strides, groups=self.groups,
                conv_strategy=self.conv_strategy, name="conv")(h)


class MFUnit(nn.Module):
  """Multi-fiber unit ``MF_UNIT``: multiplexer (i1, i2), fibers (m1, m2), shortcut (w1).

  ``(B, T, H, W, C_in) -> (B, T', H', W', out_channels)``.
  """
  mid_channels: int
  out_channels: int
  groups: int = 16
  strides: Sequence[int] = (1, 1, 1)
  first_block: bool = False
  conv_strategy: str = "auto"
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    layer = functools.partial(BNReLUConv, conv_strategy=self.conv_strategy,
                              batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels)
    h = layer(self.mid_channels // 4, name="conv_i1")(x, train)
    x_in = x + layer(in_channels, name="conv_i2")(h, train)
    h = layer(self.mid_channels, (3, 3, 3), self.strides, self.groups, name="conv_m1")(x_in, train)
    if self.first_block:
      h = layer(self.out_channels, name="conv_m2")(h, train)
      x = layer(self.out_channels, strides=self.strides, name="conv_w1")(x, train)
    else:
      h = layer(self.out_channels, (1, 3, 3), groups=self.groups, name="conv_m2")(h, train)
    return h + x


class MFNet3D(nn.Module):
  """The MFNet-3D backbone: conv1, max-pool, conv2..conv5, tail BN-ReLU, global pool.

  Returns a dict of stage outputs (``conv1``, ``conv2`` .. ``conv5``, each
  ``(B, T, H, W, C)``), ``last`` (conv5 after the tail BN-ReLU) and ``pooled``, its
  ``(B, C5)`` global average that feeds the classifier.
  The final average pool is global, so any frame count / size that survives the strides
  works; the paper's input is 16x224x224.
  """
  conv1_channels: int = 16
  stage_channels: Sequence[int] = (96, 192, 384, 768)
  stage_depths: Sequence[int] = (3, 4, 6, 3)
  groups: int = 16
  conv_strategy: str = "auto"  # layers.conv's strategy, for every convolution
  batch_norm_axis: Optional[str] = None  # layers.BatchNorm's batch_norm_axis, for every BatchNorm
  cpu_kernels: bool = False  # BatchNorm's sums and the max-pool gradient in C++

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Dict[str, jax.Array]:
    out = {}
    h = _Conv1(self.conv1_channels, self.conv_strategy, self.batch_norm_axis, self.cpu_kernels,
               name="conv1")(x, train)
    out["conv1"] = h
    h = max_pool(h, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)), self.cpu_kernels)
    for i, (stage, channels, depth) in enumerate(
        zip(STAGES, self.stage_channels, self.stage_depths)):
      first_strides = (2, 1, 1) if i == 0 else (1, 2, 2)
      h = _Stage(channels, depth, self.groups, first_strides, self.conv_strategy,
                 self.batch_norm_axis, self.cpu_kernels, name=stage)(h, train)
      out[stage] = h
    h = _Tail(self.batch_norm_axis, self.cpu_kernels, name="tail")(h, train)
    out["last"] = h  # the final activation map (after the tail), globally pooled below
    out["pooled"] = jnp.mean(h, axis=(1, 2, 3))
    return out


class _Conv1(nn.Module):
  """``conv1``: Conv3d(3 -> C, k=(3,5,5), s=(1,2,2), pad=(1,2,2)) -> BN -> ReLU."""
  features: int
  conv_strategy: str = "auto"
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x, train):
    h = Conv(self.features, (3, 5, 5), (1, 2, 2), conv_strategy=self.conv_strategy, name="conv")(x)
    return BatchNorm(relu=True, batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels,
                     name="bn")(h, train)


class _Stage(nn.Module):
  """One stage of MF units named ``B01``, ``B02``, ... ; the first one strides."""
  channels: int
  depth: int
  groups: int
  first_strides: Sequence[int]
  conv_strategy: str = "auto"
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x, train):
    for b in range(self.depth):
      x = MFUnit(self.channels, self.channels, self.groups,
                 self.first_strides if b == 0 else (1, 1, 1), first_block=b == 0,
                 conv_strategy=self.conv_strategy, batch_norm_axis=self.batch_norm_axis,
                 cpu_kernels=self.cpu_kernels, name=f"B{b + 1:02d}")(x, train)
    return x


class _Tail(nn.Module):
  """``tail``: BN -> ReLU on the conv5 output."""
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x, train):
    return BatchNorm(relu=True, batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels,
                     name="bn")(x, train)
