"""``layers.conv``: every strategy equals a naive loop convolution, in values and gradients."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax import native
from kpsem_jax.models import cpu_kernels, layers
from kpsem_jax.models.classifier import create_model
from kpsem_jax.models.layers import STRATEGIES, conv

CASES = [  # (input (B, T, H, W, C), kernel (kt, kh, kw), C_out, strides, padding, groups)
    ((2, 4, 6, 6, 8), (3, 3, 3), 8, (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 4),
    ((1, 5, 7, 7, 6), (3, 3, 3), 12, (2, 2, 2), ((1, 1), (1, 1), (1, 1)), 3),
    ((2, 3, 6, 6, 8), (1, 3, 3), 8, (1, 1, 1), ((0, 0), (1, 1), (1, 1)), 8),
    ((1, 4, 9, 9, 3), (3, 5, 5), 4, (1, 2, 2), ((1, 1), (2, 2), (2, 2)), 1),
    ((2, 4, 5, 5, 6), (1, 1, 1), 4, (2, 1, 1), ((0, 0), (0, 0), (0, 0)), 1),
    # 10 channels per group: above layers.PATCHES_FORWARD_MAX_GROUP_WIDTH, so ``auto``
    # takes XLA's grouped forward pass here and the patches one in the cases above.
    ((1, 3, 5, 5, 20), (3, 3, 3), 4, (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 2),
]


KERNELS_BUILT = cpu_kernels.available()  # read before any test hides them


def without_cpu_kernels(monkeypatch):
  """``auto`` as on a machine where :mod:`kpsem_jax.models.cpu_kernels` cannot be built."""
  monkeypatch.setattr(layers.convolution, "_cpu_kernels_built", lambda: False)


@pytest.fixture
def auto_on_tiny_maps(monkeypatch):
  """``auto``'s pure-XLA CPU path (patches gradient), also on these tiny test maps."""
  without_cpu_kernels(monkeypatch)
  monkeypatch.setattr(layers.convolution, "SMALL_CONV_MAX_ELEMENTS", 0)


def naive_conv(x, kernel, strides, padding, groups):
  """Output position by output position, tap by tap, group by group (numpy, float64)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0),) + tuple(padding) + ((0, 0),))
  kernel = np.asarray(kernel, np.float64)
  window, c_in_g, c_out = kernel.shape[:3], kernel.shape[3], kernel.shape[4]
  out_size = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:4], window, strides)]
  out = np.zeros((x.shape[0], *out_size, c_out))
  c_out_g = c_out // groups
  for t, h, w in itertools.product(*(range(n) for n in out_size)):
    for g in range(groups):
      patch = x[:, t * strides[0]:t * strides[0] + window[0],
                h * strides[1]:h * strides[1] + window[1],
                w * strides[2]:w * strides[2] + window[2], g * c_in_g:(g + 1) * c_in_g]
      out[:, t, h, w, g * c_out_g:(g + 1) * c_out_g] = np.einsum(
          "bthwc,thwco->bo", patch, kernel[..., g * c_out_g:(g + 1) * c_out_g])
  return out


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("conv_strategy", STRATEGIES)
def test_every_strategy_matches_the_naive_convolution_and_its_gradient(conv_strategy, case,
                                                                      auto_on_tiny_maps):
  if conv_strategy == "onednn" and not KERNELS_BUILT:  # (the fixture hides them from auto only)
    pytest.skip(f"oneDNN conv: {cpu_kernels.unavailable_reason()}")
  shape, window, c_out, strides, padding, groups = CASES[case]
  rng = np.random.RandomState(case)
  x = rng.randn(*shape).astype(np.float32)
  kernel = rng.randn(*window, shape[-1] // groups, c_out).astype(np.float32)
  y = conv(x, kernel, strides, padding, groups, conv_strategy)
  np.testing.assert_allclose(y, naive_conv(x, kernel, strides, padding, groups),
                             rtol=1e-4, atol=1e-4)
  # Gradients against the plain XLA convolution's (itself checked above).
  cot = rng.randn(*y.shape).astype(np.float32)
  loss = lambda s: lambda a, b: jnp.sum(conv(a, b, strides, padding, groups, s) * cot)
  got = jax.grad(loss(conv_strategy), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_unknown_strategy_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown convolution strategy 'fast'"):
    conv(np.zeros((1, 2, 4, 4, 2)), np.zeros((1, 1, 1, 2, 2)), (1, 1, 1), ((0, 0),) * 3,
         conv_strategy="fast")


@pytest.mark.slow
def test_mfnet_gives_the_same_logits_and_gradients_under_every_strategy(auto_on_tiny_maps):
  kwargs = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32), stage_depths=(1, 1, 1, 1),
                groups=4)
  x = np.random.RandomState(0).randn(2, 4, 32, 32, 3).astype(np.float32)
  variables = create_model("mfnet3d", 5, kwargs).init(jax.random.PRNGKey(0), x)
  results = {}
  for conv_strategy in STRATEGIES:
    if conv_strategy == "onednn" and not KERNELS_BUILT:
      continue
    model = create_model("mfnet3d", 5, kwargs, conv_strategy=conv_strategy)
    loss = lambda p: jnp.sum(model.apply(dict(variables, params=p), x) ** 2)  # noqa: E731
    # Compiled: op by op, the gradient of every strategy took over a minute in all.
    results[conv_strategy] = (jax.jit(model.apply)(variables, x),
                              jax.jit(jax.grad(loss))(variables["params"]))
  ref_logits, ref_grads = results["xla"]
  for conv_strategy, (logits, grads) in results.items():
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5, err_msg=conv_strategy)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=conv_strategy)


@pytest.mark.parametrize("channels, groups, xla_forward", [(8, 4, False), (20, 2, True),
                                                           (6, 1, True)])
def test_auto_takes_the_patches_forward_pass_only_for_narrow_groups(channels, groups,
                                                                    xla_forward,
                                                                    auto_on_tiny_maps):
  x, kernel = np.zeros((1, 3, 5, 5, channels)), np.zeros((3, 3, 3, channels // groups, 4))
  forward = str(jax.make_jaxpr(lambda a, b: conv(a, b, (1, 1, 1), ((1, 1),) * 3, groups))(
      x, kernel))
  assert ("conv_general_dilated" in forward) == xla_forward
  # The gradient is the patches one in every case: no XLA convolution left in it.
  grad = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(
      conv(a, b, (1, 1, 1), ((1, 1),) * 3, groups)), argnums=(0, 1)))(x, kernel))
  assert grad.count("conv_general_dilated") == forward.count("conv_general_dilated")


def _xla_conv_count(x_shape, c_out, groups):
  x, kernel = np.zeros(x_shape), np.zeros((3, 3, 3, x_shape[-1] // groups, c_out))
  f = lambda a, b: jnp.sum(conv(a, b, (1, 1, 1), ((1, 1),) * 3, groups))  # noqa: E731
  return str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, kernel)).count(
      "conv_general_dilated")


def test_auto_takes_plain_xla_both_ways_on_small_maps_only(monkeypatch):
  without_cpu_kernels(monkeypatch)
  limit = layers.SMALL_CONV_MAX_ELEMENTS
  small = (1, 4, 8, 8, 8)  # 2048 elements
  assert np.prod(small) <= limit
  # Forward, and the gradients with respect to the input and to the kernel.
  assert _xla_conv_count(small, 8, 4) == 3
  # Just over the limit (8 channels per group, 2 groups): the patches path, no XLA
  # convolution at all.
  large = (1, 1, 1, limit // 16 + 1, 16)
  assert np.prod(large) == limit + 16
  assert _xla_conv_count(large, 8, 2) == 0


requires_onednn = pytest.mark.skipif(not cpu_kernels.available(),
                                     reason=f"oneDNN conv: {cpu_kernels.unavailable_reason()}")


@requires_onednn
@pytest.mark.parametrize("x_shape, window, c_out, strides, padding, groups", [
    ((2, 7, 24, 6), (1, 3), 4, (1, 2), ((0, 0), (1, 1)), 1),  # KPSEM's reduction conv
    ((2, 9, 8), (3,), 4, (2,), ((1, 0),), 2),
])
def test_onednn_takes_one_and_two_spatial_axes(x_shape, window, c_out, strides, padding,
                                               groups):
  rng = np.random.RandomState(1)
  x = rng.randn(*x_shape).astype(np.float32)
  kernel = rng.randn(*window, x_shape[-1] // groups, c_out).astype(np.float32)
  loss = lambda s: lambda a, b: jnp.sum(  # noqa: E731
      conv(a, b, strides, padding, groups, s) ** 2)
  np.testing.assert_allclose(conv(x, kernel, strides, padding, groups, "onednn"),
                             conv(x, kernel, strides, padding, groups, "xla"),
                             rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.grad(loss("onednn"), (0, 1))(x, kernel),
                  jax.grad(loss("xla"), (0, 1))(x, kernel)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@requires_onednn
def test_auto_is_onednn_both_ways_on_a_cpu():
  x, kernel = np.zeros((1, 4, 8, 8, 8)), np.zeros((3, 3, 3, 2, 8))
  f = lambda a, b: jnp.sum(conv(a, b, (1, 1, 1), ((1, 1),) * 3, 4))  # noqa: E731
  forward = str(jax.make_jaxpr(f)(x, kernel))
  assert "kpsem_onednn_conv_forward" in forward and "conv_general_dilated" not in forward
  # Differentiated: oneDNN's forward, input-gradient and kernel-gradient calls, no XLA conv.
  grad = str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, kernel))
  for name in ("forward", "input_grad", "kernel_grad"):
    assert grad.count(f"kpsem_onednn_conv_{name}") == 1, name
  assert "conv_general_dilated" not in grad
  # A pointwise convolution stays a matmul (patches_grad): no custom call, no convolution
  # in its gradient.
  pointwise = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(
      conv(a, b, (1, 1, 1), ((0, 0),) * 3)), argnums=(0, 1)))(x, np.zeros((1, 1, 1, 8, 4))))
  assert "kpsem_onednn" not in pointwise and pointwise.count("conv_general_dilated") == 1


def test_onednn_strategy_without_the_extension_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(cpu_kernels.build._State, "library", None)
  monkeypatch.setattr(cpu_kernels.build._State, "reason", "no C++ compiler found (set CXX ...)")
  monkeypatch.setattr(layers.convolution, "SMALL_CONV_MAX_ELEMENTS", 65536)
  with pytest.raises(RuntimeError, match="oneDNN convolution is unavailable: no C\\+\\+ comp"):
    conv(np.zeros((1, 2, 4, 4, 2)), np.zeros((1, 1, 1, 2, 2)), (1, 1, 1), ((0, 0),) * 3,
         conv_strategy="onednn")
  # ... and ``auto`` falls back to XLA (a small map: XLA both ways).
  jaxpr = str(jax.make_jaxpr(lambda a, b: conv(a, b, (1, 1, 1), ((0, 0),) * 3))(
      np.zeros((1, 2, 4, 4, 2)), np.zeros((1, 1, 1, 2, 2))))
  assert "conv_general_dilated" in jaxpr


def test_the_extension_is_built_in_the_cache_and_reused(tmp_path, monkeypatch):
  """A fresh cache gets one library under its final name; a second load compiles nothing."""
  root, compiler = cpu_kernels.build._onednn_root(), native.compiler()
  if root is None or compiler is None:
    pytest.skip(f"oneDNN conv: {cpu_kernels.unavailable_reason()}")
  monkeypatch.setenv("KPSEM_JAX_CACHE", str(tmp_path))
  path = cpu_kernels.build._build(compiler, root)
  assert os.listdir(tmp_path) == [os.path.basename(path)]
  mtime = os.path.getmtime(path)
  monkeypatch.setattr(native.subprocess, "run", None)  # any compile would fail now
  assert cpu_kernels.build._build(compiler, root) == path and os.path.getmtime(path) == mtime


def test_auto_strategy_by_platform_kernel_and_size():
  """``auto``'s choice is a function of the platform, the kernels' presence and the shapes
  (not of the device count: under ``shard_map`` each device sees its own shard)."""
  small, large = np.zeros((1, 4, 8, 8, 8)), np.zeros((2, 8, 28, 28, 96))
  k333, k111 = np.zeros((3, 3, 3, 2, 8)), np.zeros((1, 1, 1, 8, 8))
  choose = layers.auto_strategy
  assert [choose(x, k, "gpu", True) for x in (small, large) for k in (k333, k111)] == ["xla"] * 4
  assert [choose(x, k333, "cpu", True) for x in (small, large)] == ["onednn"] * 2
  assert choose(large, k111, "cpu", True) == "patches_grad"
  assert choose(small, k333, "cpu", False) == "xla"
  assert choose(large, k333, "cpu", False) == "patches_grad"


@pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels not built")
@pytest.mark.parametrize("conv_strategy,kernels", [("auto", None), ("auto", False),
                                                   ("xla", None), ("xla", True)])
def test_the_cpu_kernels_are_one_decision_apart_from_the_convolutions(conv_strategy, kernels):
  """``create_model(cpu_kernels=...)`` alone turns BatchNorm's sums, the max-pool gradient
  and the regional argmax to C++; None follows the convolutions (oneDNN: on, XLA: off)."""
  model = create_model("mfnet3d", 3, backbone_kwargs=dict(
      conv1_channels=8, stage_channels=(8, 8, 8, 8), stage_depths=(1, 1, 1, 1), groups=2),
      kpsem=dict(num_sets=2, embed_dim=4, reduction_channels=(8,)), kpsem_at="conv3",
      conv_strategy=conv_strategy, cpu_kernels=kernels)
  x = jnp.zeros((2, 4, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return jnp.sum(logits)
  text = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
  on = kernels if kernels is not None else conv_strategy == "auto"
  for name in ("kpsem_batch_norm_sums", "kpsem_batch_norm_grad_sums", "kpsem_max_pool_grad",
               "kpsem_regional_argmax"):
    assert (name in text) == on, (name, conv_strategy, kernels)
  assert ("kpsem_onednn_conv" in text) == (conv_strategy == "auto")
