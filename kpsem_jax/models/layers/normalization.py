"""BatchNorm with PyTorch's eps and momentum: the pure functions for training (batch
statistics, optionally shared over a mesh axis, with C++ sums and a hand-written gradient on
CPUs) and evaluation (running averages), and the module holding the variables."""

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax.models import cpu_kernels as kernels_lib

# PyTorch's BatchNorm defaults: eps 1e-5, momentum 0.1 (Flax's momentum is 1 - that).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


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


def _batch_statistics(sums, n, batch_norm_axis):
  """Mean and biased variance from ``(2, C)`` sums of x and x**2 over ``n`` rows."""
  means = sums / n
  if batch_norm_axis is not None:
    means = jax.lax.pmean(means, batch_norm_axis)
  mean, mean_of_squares = means[0], means[1]
  return mean, jnp.maximum(0.0, mean_of_squares - mean * mean)


def _rows(x):
  return x.size // x.shape[-1]


def _batch_norm_forward(x, sums, scale, bias, relu, epsilon, batch_norm_axis):
  """``(y, mean, var)`` from the ``(2, C)`` sums of x and x**2 over this call's rows."""
  mean, var = _batch_statistics(sums, _rows(x), batch_norm_axis)
  return _normalize(x, mean, _centred_scale(mean, var, scale, epsilon), bias, relu), mean, var


def _batch_norm_train_xla(x, scale, bias, relu, epsilon, batch_norm_axis):
  x32 = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  sums = jnp.stack([jnp.sum(x32, axis=axes), jnp.sum(x32 * x32, axis=axes)])
  return _batch_norm_forward(x, sums, scale, bias, relu, epsilon, batch_norm_axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_train_kernels(x, scale, bias, relu, epsilon, batch_norm_axis):
  return _batch_norm_train_kernels_fwd(x, scale, bias, relu, epsilon, batch_norm_axis)[0]


def _batch_norm_train_kernels_fwd(x, scale, bias, relu, epsilon, batch_norm_axis):
  y, mean, var = _batch_norm_forward(x, kernels_lib.batch_norm_sums(x), scale, bias, relu,
                                     epsilon, batch_norm_axis)
  return (y, mean, var), (x, mean, var, scale, bias)


def _batch_norm_train_kernels_bwd(relu, epsilon, batch_norm_axis, residuals, cotangents):
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
  local = kernels_lib.batch_norm_grad_sums(x, dy, mean, a, bias, relu)
  total, n = local, _rows(x)
  if batch_norm_axis is not None:
    total, n = jax.lax.psum(local, batch_norm_axis), n * jax.lax.psum(1, batch_norm_axis)
  s1, s2 = total[0] / n, total[1] / n
  open_ = ((x - mean) * a + bias > 0) if relu else True
  dz = jnp.where(open_, dy, 0)
  dx = a * (dz - s1) - (x - mean) * (a * inv * inv * s2)
  dscale = kernels_lib.shard_typed(local[1] * inv, (x, dy), like=scale)
  dbias = kernels_lib.shard_typed(local[0], (x, dy), like=bias)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_batch_norm_train_kernels.defvjp(_batch_norm_train_kernels_fwd, _batch_norm_train_kernels_bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, relu: bool = False,
                     epsilon: float = BN_EPSILON, batch_norm_axis: Optional[str] = None,
                     cpu_kernels: bool = False) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """BatchNorm with the statistics of this batch, ReLU after it with ``relu``.

  Args:
    x: ``(..., C)``; statistics over every axis but the last.
    scale, bias: ``(C,)``.
    relu: ReLU after the normalisation.
    epsilon: added to the variance.
    batch_norm_axis: under ``jax.shard_map``, the mesh axis whose devices share their statistics
      (``lax.pmean`` of the means and means of squares, as PyTorch's SyncBatchNorm); None:
      this call's batch only.
    cpu_kernels: with :mod:`kpsem_jax.models.cpu_kernels` (``create_model`` decides it), the
      per-channel sums of both passes are the C++ ones
      (XLA:CPU's took about 40 of the 135 ms of a narrow MFNet's training step) with a
      hand-written gradient;
      elsewhere ``jnp`` sums and JAX's autodiff. Both give the same values and gradients.
  Returns:
    ``(y, mean, var)``: ``y`` shaped as ``x``; the batch mean and biased variance ``(C,)``,
    without gradient (for the running averages).
  """
  forward = _batch_norm_train_kernels if cpu_kernels else _batch_norm_train_xla
  y, mean, var = forward(x, scale, bias, relu, epsilon, batch_norm_axis)
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's eps and momentum, ReLU after it with ``relu``.

  Variables as ``flax.linen.BatchNorm``'s (params ``scale``, ``bias``; ``batch_stats``
  ``mean``, ``var``), so checkpoints and the PyTorch converter see the same names. In
  training, :func:`batch_norm_train` (``batch_norm_axis``, ``cpu_kernels``: see there) and the
  running averages updated with momentum ``BN_MOMENTUM``; otherwise
  :func:`batch_norm_eval` with the running averages. One difference from PyTorch: the
  running variance is updated with the biased batch variance (PyTorch uses the unbiased
  one), as Flax does.
  """
  relu: bool = False
  batch_norm_axis: Optional[str] = None
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if not train:
      return batch_norm_eval(x, ra_mean.value, ra_var.value, scale, bias, self.relu)
    y, mean, var = batch_norm_train(x, scale, bias, self.relu, BN_EPSILON, self.batch_norm_axis,
                                    self.cpu_kernels)
    if not self.is_initializing():
      ra_mean.value = BN_MOMENTUM * ra_mean.value + (1 - BN_MOMENTUM) * mean
      ra_var.value = BN_MOMENTUM * ra_var.value + (1 - BN_MOMENTUM) * var
    return y
