"""R3D / C2D ResNet-50 (Wang et al. 2018) as the KPSEM paper uses it.

C2D style: every kernel is ``1 x k x k`` (2-D ResNet-50 applied frame by frame, no
temporal downsampling); ``temporal_kernel=3`` inflates the first 1x1x1 convolution of
each bottleneck to 3x1x1 (the R3D/I3D variant). Input ``(B, T, H, W, 3)``; for 16x224x224
the stage outputs are res2 16x56x56x256, res3 16x28x28x512, res4 16x14x14x1024,
res5 16x7x7x2048. The paper attaches KPSEM after ``res3``.
"""

import functools
from typing import Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax.models.layers import BatchNorm, Conv, max_pool

STAGES = ("res2", "res3", "res4", "res5")


class ConvBNReLU(nn.Module):
  """Conv3d -> BatchNorm (-> ReLU unless ``relu=False``)."""
  features: int
  kernel_size: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  relu: bool = True
  conv_strategy: str = "auto"  # layers.conv's strategy
  batch_norm_axis: Optional[str] = None  # layers.BatchNorm's batch_norm_axis
  cpu_kernels: bool = False  # BatchNorm's sums by kpsem_jax.models.cpu_kernels

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = Conv(self.features, self.kernel_size, self.strides, conv_strategy=self.conv_strategy,
             name="conv")(x)
    return BatchNorm(relu=self.relu, batch_norm_axis=self.batch_norm_axis,
                     cpu_kernels=self.cpu_kernels, name="bn")(h, train)


class Bottleneck(nn.Module):
  """ResNet bottleneck ``(B, T, H, W, C) -> (B, T, H/s, W/s, 4 * width)``."""
  width: int
  spatial_stride: int = 1
  temporal_kernel: int = 1
  conv_strategy: str = "auto"
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_channels = 4 * self.width
    strides = (1, self.spatial_stride, self.spatial_stride)
    layer = functools.partial(ConvBNReLU, conv_strategy=self.conv_strategy,
                              batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels)
    h = layer(self.width, (self.temporal_kernel, 1, 1), name="conv_a")(x, train)
    h = layer(self.width, (1, 3, 3), strides, name="conv_b")(h, train)
    h = layer(out_channels, relu=False, name="conv_c")(h, train)
    if x.shape[-1] != out_channels or self.spatial_stride != 1:
      x = layer(out_channels, strides=strides, relu=False, name="shortcut")(x, train)
    return nn.relu(h + x)


class ResNet3D(nn.Module):
  """ResNet-50 backbone with 1xkxk kernels (optionally 3x1x1 inflated).

  Returns a dict of stage outputs (``stem``, ``res2`` .. ``res5``), ``last`` (= res5) and
  ``pooled`` ``(B, 8 * base_width * 4)``, the globally averaged res5 feature.
  """
  stage_depths: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  temporal_kernel: int = 1
  conv_strategy: str = "auto"  # layers.conv's strategy, for every convolution
  batch_norm_axis: Optional[str] = None  # layers.BatchNorm's batch_norm_axis, for every BatchNorm
  cpu_kernels: bool = False  # BatchNorm's sums and the max-pool gradient in C++

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Dict[str, jax.Array]:
    out = {}
    h = ConvBNReLU(self.base_width, (1, 7, 7), (1, 2, 2), conv_strategy=self.conv_strategy,
                   batch_norm_axis=self.batch_norm_axis, cpu_kernels=self.cpu_kernels,
                   name="stem")(x, train)
    out["stem"] = h
    h = max_pool(h, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)), self.cpu_kernels)
    for i, (stage, depth) in enumerate(zip(STAGES, self.stage_depths)):
      for b in range(depth):
        h = Bottleneck(self.base_width * 2**i, 2 if (b == 0 and i > 0) else 1,
                       self.temporal_kernel, self.conv_strategy, self.batch_norm_axis,
                       self.cpu_kernels, name=f"{stage}_B{b + 1:02d}")(h, train)
      out[stage] = h
    out["last"] = h  # the final activation map, globally pooled below
    out["pooled"] = jnp.mean(h, axis=(1, 2, 3))
    return out
