"""``layers.conv``: every strategy equals a naive loop convolution, in values and gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax.layers import STRATEGIES, conv
from kpsem_jax.models import create_model

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
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_matches_the_naive_convolution_and_its_gradient(strategy, case):
  shape, window, c_out, strides, padding, groups = CASES[case]
  rng = np.random.RandomState(case)
  x = rng.randn(*shape).astype(np.float32)
  kernel = rng.randn(*window, shape[-1] // groups, c_out).astype(np.float32)
  y = conv(x, kernel, strides, padding, groups, strategy)
  np.testing.assert_allclose(y, naive_conv(x, kernel, strides, padding, groups),
                             rtol=1e-4, atol=1e-4)
  # Gradients against the plain XLA convolution's (itself checked above).
  cot = rng.randn(*y.shape).astype(np.float32)
  loss = lambda s: lambda a, b: jnp.sum(conv(a, b, strides, padding, groups, s) * cot)
  got = jax.grad(loss(strategy), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_unknown_strategy_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown convolution strategy 'fast'"):
    conv(np.zeros((1, 2, 4, 4, 2)), np.zeros((1, 1, 1, 2, 2)), (1, 1, 1), ((0, 0),) * 3,
         strategy="fast")


def test_mfnet_gives_the_same_logits_and_gradients_under_every_strategy():
  kwargs = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32), stage_depths=(1, 1, 1, 1),
                groups=4)
  x = np.random.RandomState(0).randn(2, 4, 32, 32, 3).astype(np.float32)
  variables = create_model("mfnet3d", 5, kwargs).init(jax.random.PRNGKey(0), x)
  results = {}
  for strategy in STRATEGIES:
    model = create_model("mfnet3d", 5, dict(kwargs, conv_strategy=strategy))
    loss = lambda p: jnp.sum(model.apply(dict(variables, params=p), x) ** 2)  # noqa: E731
    results[strategy] = (model.apply(variables, x), jax.grad(loss)(variables["params"]))
  ref_logits, ref_grads = results["xla"]
  for strategy, (logits, grads) in results.items():
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5, err_msg=strategy)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=strategy)


@pytest.mark.parametrize("channels, groups, xla_forward", [(8, 4, False), (20, 2, True),
                                                           (6, 1, True)])
def test_auto_takes_the_patches_forward_pass_only_for_narrow_groups(channels, groups,
                                                                    xla_forward):
  x, kernel = np.zeros((1, 3, 5, 5, channels)), np.zeros((3, 3, 3, channels // groups, 4))
  forward = str(jax.make_jaxpr(lambda a, b: conv(a, b, (1, 1, 1), ((1, 1),) * 3, groups))(
      x, kernel))
  assert ("conv_general_dilated" in forward) == xla_forward
  # The gradient is the patches one in every case: no XLA convolution left in it.
  grad = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(
      conv(a, b, (1, 1, 1), ((1, 1),) * 3, groups)), argnums=(0, 1)))(x, kernel))
  assert grad.count("conv_general_dilated") == forward.count("conv_general_dilated")
