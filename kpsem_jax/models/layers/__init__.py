"""The primitives the backbones share, one module each, forward and gradient together:

- :mod:`~kpsem_jax.models.layers.convolution`: :func:`conv` (strategies ``xla``, ``group_loop``,
  ``patches``, ``patches_grad``, ``onednn``, ``auto``) and the :class:`Conv` module;
- :mod:`~kpsem_jax.models.layers.pooling`: :func:`max_pool` with its own gradient;
- :mod:`~kpsem_jax.models.layers.normalization`: :func:`batch_norm_train`, :func:`batch_norm_eval`
  and the :class:`BatchNorm` module.

The maths is in the pure functions; the modules only hold parameters. Their public names are
imported here: ``layers.conv``, ``layers.BatchNorm``, ...
"""

from kpsem_jax.models.layers.convolution import (
    AUTO_ONEDNN, AUTO_XLA, PATCHES_FORWARD_MAX_GROUP_WIDTH, RESOLVED, SMALL_CONV_MAX_ELEMENTS,
    STRATEGIES, Conv, Padding, auto_strategy, conv, resolve_conv_strategy, same_padding,
    uses_cpu_kernels)
from kpsem_jax.models.layers.normalization import (
    BN_EPSILON, BN_MOMENTUM, BatchNorm, batch_norm_eval, batch_norm_train)
from kpsem_jax.models.layers.pooling import max_pool

__all__ = ["AUTO_ONEDNN", "AUTO_XLA", "RESOLVED", "resolve_conv_strategy",
           "PATCHES_FORWARD_MAX_GROUP_WIDTH", "SMALL_CONV_MAX_ELEMENTS", "STRATEGIES", "Conv",
           "Padding", "auto_strategy", "conv", "same_padding", "uses_cpu_kernels", "BN_EPSILON",
           "BN_MOMENTUM", "BatchNorm", "batch_norm_eval", "batch_norm_train", "max_pool"]
