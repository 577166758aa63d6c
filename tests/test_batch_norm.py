"""``layers.BatchNorm`` and ``layers.batch_norm_train``: values, gradients and running
statistics equal a float64 reference and Flax's ``BatchNorm``, with the C++ sums
(``cpu_kernels.batch_norm_sums``, ``batch_norm_grad_sums``) and with XLA's, on one device
and with statistics shared over devices."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax.models import cpu_kernels, layers
from kpsem_jax.testing import fake_devices
from kpsem_jax.testing.batch_norm_reference import inputs, reference

requires_cpu_kernels = pytest.mark.skipif(
    not cpu_kernels.available(),
    reason=f"CPU kernels not built: {cpu_kernels.unavailable_reason()}")
KERNELS = [False, pytest.param(True, marks=requires_cpu_kernels)]  # the layers' cpu_kernels


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_train_equals_the_float64_reference(kernels, relu):
  x, scale, bias, w = inputs()

  def loss(x, scale, bias):
    y, mean, var = layers.batch_norm_train(x, scale, bias, relu, cpu_kernels=kernels)
    return jnp.sum(y * w), (y, mean, var)

  (_, (y, mean, var)), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
      x, scale, bias)
  want = reference(x, scale, bias, w, relu)
  for got, expected, name in zip((y, mean, var, *grads), want,
                                 ("y", "mean", "var", "dx", "dscale", "dbias")):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5,
                               atol=2e-5 * np.abs(expected).max(), err_msg=name)
  if relu:
    assert float(jnp.min(y)) == 0.0 and np.mean(np.asarray(y) == 0) > 0.2  # the ReLU acted


@requires_cpu_kernels
def test_cpu_sums_equal_float64_sums():
  x, scale, bias, w = inputs((2, 3, 7, 5, 40), seed=1)  # 210 rows: not a multiple of a block
  x64 = x.astype(np.float64).reshape(-1, 40)
  got = np.asarray(jax.jit(cpu_kernels.batch_norm_sums)(x))
  np.testing.assert_allclose(got, [x64.sum(0), (x64 ** 2).sum(0)], rtol=1e-6)
  mean, a = x64.mean(0), scale / 2
  for relu in (False, True):
    got = np.asarray(cpu_kernels.batch_norm_grad_sums(x, w, mean.astype(np.float32), a, bias,
                                                      relu))
    open_ = ((x64 - mean) * a + bias > 0) if relu else np.ones_like(x64, bool)
    dz = np.where(open_, w.reshape(-1, 40), 0)
    np.testing.assert_allclose(got, [dz.sum(0), (dz * (x64 - mean)).sum(0)], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("kernels", KERNELS)
def test_batch_norm_module_equals_flax_batch_norm(kernels):
  """Variables, training output, running averages (PyTorch's momentum) and evaluation."""
  x, _, _, w = inputs((4, 3, 5, 5, 16), seed=2)
  ours = layers.BatchNorm(relu=True, cpu_kernels=kernels)
  flax = nn.BatchNorm(use_running_average=False, momentum=layers.BN_MOMENTUM,
                      epsilon=layers.BN_EPSILON)
  variables = ours.init(jax.random.PRNGKey(0), x, train=True)
  flax_variables = flax.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_variables)
  rng = np.random.default_rng(3)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32),
                           variables)
  y, updated = jax.jit(lambda v, x: ours.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  want_y, want_updated = flax.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y, jax.nn.relu(want_y), rtol=1e-5, atol=1e-5)
  for k in ("mean", "var"):
    np.testing.assert_allclose(updated["batch_stats"][k], want_updated["batch_stats"][k],
                               rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(ours.apply(dict(variables, params=p), x, train=True,
                                               mutable=["batch_stats"])[0] * w))
  flax_grad = jax.grad(lambda p: jnp.sum(jax.nn.relu(flax.apply(
      dict(variables, params=p), x, mutable=["batch_stats"])[0]) * w))
  for k in ("scale", "bias"):
    np.testing.assert_allclose(grad(variables["params"])[k], flax_grad(variables["params"])[k],
                               rtol=1e-4, atol=1e-4)
  evaluated = ours.apply(variables, x, train=False)
  flax_eval = nn.BatchNorm(use_running_average=True, epsilon=layers.BN_EPSILON).apply(
      variables, x)
  np.testing.assert_allclose(evaluated, jax.nn.relu(flax_eval), rtol=1e-6, atol=1e-6)


SHARED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from kpsem_jax.models import layers
from kpsem_jax.testing import batch_norm_reference as test_batch_norm
assert jax.device_count() == 4, jax.devices()
x, scale, bias, w = test_batch_norm.inputs((8, 2, 3, 4, 16), seed=4)
want = test_batch_norm.reference(x, scale, bias, w, relu=True)
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
out = {{}}
for kernels in {kernels!r}:
  def local(x, w, scale, bias):
    # Parameters per device, as in the train step: their gradients are this device's part.
    scale, bias = (jax.lax.pcast(a, "data", to="varying") for a in (scale, bias))
    def loss(x, scale, bias):
      y, mean, var = layers.batch_norm_train(x, scale, bias, True, batch_norm_axis="data",
                                             cpu_kernels=kernels)
      return jnp.sum(y * w), (y, mean, var)
    (_, (y, mean, var)), (dx, ds, db) = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
        x, scale, bias)
    return y, mean, var, dx, jax.lax.psum(ds, "data"), jax.lax.psum(db, "data")
  shard, rep = jax.P("data"), jax.P()
  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(shard, shard, rep, rep),
                              out_specs=(shard, rep, rep, shard, rep, rep)))(x, w, scale, bias)
  out[str(kernels)] = [float(np.abs(np.asarray(g) - e).max() / np.abs(e).max())
                   for g, e in zip(got, want)]
print(json.dumps(out))
"""


def test_statistics_shared_over_devices_equal_the_global_batch():
  """``axis_name`` under ``shard_map`` on 4 devices: the values and gradients of BatchNorm
  over the whole batch (SyncBatchNorm), with both kinds of sums."""
  kernels = [False] + ([True] if cpu_kernels.available() else [])
  script = SHARED_SCRIPT.format(kernels=kernels)
  result = fake_devices.run_script(script, devices=4)
  assert sorted(result) == sorted(map(str, kernels))
  for which, errors in result.items():
    assert max(errors) < 2e-5, (which, errors)  # y, mean, var, dx, dscale, dbias
