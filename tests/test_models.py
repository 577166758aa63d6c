"""Backbones and the full classifier: shapes, parameter counts, names, gradients."""

import jax
import jax.numpy as jnp
from flax import traverse_util
import numpy as np
import pytest

from kpsem_jax.inference import porting
from kpsem_jax.models.classifier import create_model
from kpsem_jax.models.kpsem import KPSEM
from kpsem_jax.models.layers import conv
from kpsem_jax.testing import release_keys

PAPER = (1, 16, 224, 224, 3)
# Narrow MFNet that runs fast on a CPU: same code, fewer channels and units.
TINY_MFNET = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32), stage_depths=(1, 1, 2, 1),
                  groups=4)
TINY_KPSEM = dict(num_sets=2, embed_dim=8, reduction_channels=(8, 4))


def abstract_init(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def count(tree):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def reference_state_dict():
  keys = release_keys.reference_state_dict()
  if keys is None:
    pytest.skip(f"{release_keys.REFERENCE} not found (../shared beside the repo)")
  return keys


def test_mfnet_stage_shapes_at_paper_size():
  model = create_model("mfnet3d", 400)
  variables = abstract_init(model, PAPER)
  stages = jax.eval_shape(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x)),
                          variables, jax.ShapeDtypeStruct(PAPER, jnp.float32))
  assert {k: v.shape for k, v in stages.items()} == {
      "conv1": (1, 16, 112, 112, 16), "conv2": (1, 8, 56, 56, 96),
      "conv3": (1, 8, 28, 28, 192), "conv4": (1, 8, 14, 14, 384),
      "conv5": (1, 8, 7, 7, 768), "last": (1, 8, 7, 7, 768), "pooled": (1, 768)}


def test_mfnet_400_has_the_original_parameter_count():
  assert count(abstract_init(create_model("mfnet3d", 400), PAPER)["params"]) == 7_996_368


def test_mfnet_names_and_shapes_map_onto_the_pytorch_state_dict():
  reference = reference_state_dict()
  variables = abstract_init(create_model("mfnet3d", 400), PAPER)
  mapping = porting.expected_torch_keys(variables)
  expected = {k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")}
  assert sorted(mapping) == sorted(expected)
  flat = {c: traverse_util.flatten_dict(variables[c]) for c in ("params", "batch_stats")}
  for key, (collection, path) in mapping.items():
    leaf = np.zeros(flat[collection][path].shape, np.float32)
    assert porting.flax_to_torch_array(path, leaf).shape == expected[key], key


def test_mf_kpsem_temporal_feature_is_672():
  model = create_model("mfnet3d", 51, kpsem={})
  variables = abstract_init(model, PAPER)
  v_out = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.features), variables,
                         jax.ShapeDtypeStruct(PAPER, jnp.float32))
  assert v_out.shape == (1, 768 + 672)
  assert variables["params"]["classifier"]["kernel"].shape == (1440, 51)
  kpsem_params = variables["params"]["kpsem"]
  assert kpsem_params["embed_w"].shape == (8, 2, 24)  # G = 8 sets, d_e = 24
  assert kpsem_params["mlp_w2"].shape == (8, 16, 2)  # K = 4: one centre (dx, dy) per frame
  assert kpsem_params["reduce2"]["kernel"].shape == (1, 3, 96, 96)


def test_resnet50_parameter_counts_and_res3_attachment():
  # torchvision's ResNet-50 has 25,557,032 parameters, 2,049,000 of them in its fc layer.
  c2d = create_model("resnet3d", 1000)
  assert count(abstract_init(c2d, (1, 8, 224, 224, 3))["params"]) == 25_557_032
  r3d = create_model("resnet3d", 51, kpsem={}, kpsem_at="res3",
                     backbone_kwargs={"temporal_kernel": 3})
  variables = abstract_init(r3d, PAPER)
  conv_a = [v for p, v in traverse_util.flatten_dict(variables["params"]).items()
            if "conv_a" in p and p[-1] == "kernel"]
  assert len(conv_a) == 16
  assert all(v.shape[0] == 3 for v in conv_a)
  v_out = jax.eval_shape(lambda v, x: r3d.apply(v, x, method=r3d.features), variables,
                         jax.ShapeDtypeStruct(PAPER, jnp.float32))
  assert v_out.shape == (1, 2048 + 15 * 96)  # res3: 16 frames -> 15 shifts x 96 channels


@pytest.fixture(scope="module")
def tiny():
  """A narrow MF-KPSEM, its input (2, 8, 64, 64, 3) and initialised variables."""
  model = create_model("mfnet3d", 5, backbone_kwargs=TINY_MFNET, kpsem=TINY_KPSEM)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 64, 64, 3))
  return model, x, jax.jit(model.init)(jax.random.PRNGKey(1), x)


def test_tiny_mfnet_runs_any_frame_count(tiny):
  model, _, variables = tiny
  assert variables["params"]["classifier"]["kernel"].shape == (32 + 3 * 4, 5)
  # The backbone has no frame count baked in; KPSEM's output grows with T - 1.
  for frames in (8, 12):
    x = jnp.ones((2, frames, 64, 64, 3))
    v_out = jax.jit(lambda v, x: model.apply(v, x, method=model.features))(variables, x)
    assert v_out.shape == (2, 32 + (frames // 2 - 1) * 4)
  assert jax.jit(model.apply)(variables, jnp.ones((2, 8, 64, 64, 3))).shape == (2, 5)


@pytest.mark.parametrize("regions", [1, 4, 9, 16])
def test_region_count_ablation(regions):
  module = KPSEM(num_regions=regions, num_sets=2, reduction_channels=(4,))
  f = jnp.ones((1, 3, 8, 8, 6))
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), f)["params"]
  k = int(regions ** 0.5)
  if regions == 1:
    assert "mlp_w2" not in params  # nothing to split
  else:
    assert params["mlp_w2"].shape == (2, 16, 2 * (k - 1))
  _, state = jax.jit(lambda x: module.apply(jax.jit(module.init)(jax.random.PRNGKey(0), x), x,
                                            mutable=["intermediates"]))(f)
  assert state["intermediates"]["arese"][0].shifts.shape == (2, 1, 2, regions, 6, 2)


def test_non_square_region_count_is_an_error():
  with pytest.raises(ValueError, match="square"):
    KPSEM(num_regions=6).init(jax.random.PRNGKey(0), jnp.ones((1, 3, 8, 8, 4)))


def test_fixed_regions_have_no_centre_mlp_and_differ_per_set():
  module = KPSEM(adaptive=False, num_sets=3, reduction_channels=(4,))
  f = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 8, 8, 4))
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), f)
  assert not any(k.startswith("mlp") for k in variables["params"])
  _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, f)
  splits = state["intermediates"]["arese"][0].splits_x  # (G, B, T, 1)
  assert len(set(np.round(np.asarray(splits[:, 0, 0, 0]), 5))) == 3


def test_unknown_attachment_point_is_a_clear_error():
  model = create_model("mfnet3d", 5, backbone_kwargs=TINY_MFNET, kpsem=TINY_KPSEM,
                       kpsem_at="res3")
  with pytest.raises(ValueError, match="kpsem_at='res3' is not a stage"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 8, 64, 64, 3)))


def test_gradients_reach_every_kpsem_part_and_stay_finite(tiny):
  model, x, variables = tiny

  @jax.jit
  def grads(params, x):
    def loss(p):
      logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                              train=True, mutable=["batch_stats"])
      return jnp.mean(jax.nn.log_softmax(logits)[:, 0])
    return jax.grad(loss)(params)

  g = grads(variables["params"], x)["kpsem"]
  for name in ("mlp_w2", "mlp_b2", "embed_w", "embed_b"):
    assert float(jnp.abs(g[name]).max()) > 0, name
  for conv in ("reduce1", "reduce2"):
    assert float(jnp.abs(g[conv]["kernel"]).max()) > 0, conv
  # The MLP's last layer starts at zero (geometric split), which blocks the first layer's
  # gradient; once it has moved, the gradient reaches the first layer too.
  np.testing.assert_array_equal(g["mlp_w1"], 0.0)
  moved = jax.tree.map(lambda a: a, variables["params"])
  moved["kpsem"] = dict(moved["kpsem"], mlp_w2=jnp.full_like(g["mlp_w2"], 0.1))
  assert float(jnp.abs(grads(moved, x)["kpsem"]["mlp_w1"]).max()) > 0
  for flat in (jnp.zeros_like(x), jnp.full_like(x, 2.0)):
    all_grads = grads(variables["params"], flat)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(all_grads))


def test_batch_norm_running_statistics_follow_pytorch_momentum(tiny):
  model, x, variables = tiny
  x = 3.0 + x
  _, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  # conv1's BN sees the conv output; the running mean moves 10% of the way to its batch mean.
  kernel = variables["params"]["backbone"]["conv1"]["conv"]["kernel"]
  pre_bn = conv(x, kernel, (1, 2, 2), ((1, 1), (2, 2), (2, 2)))
  expected = 0.1 * jnp.mean(pre_bn, axis=(0, 1, 2, 3))
  np.testing.assert_allclose(updated["batch_stats"]["backbone"]["conv1"]["bn"]["mean"], expected,
                             rtol=1e-4, atol=1e-5)


def test_the_ordered_readout_sees_frame_order_where_the_mean_readout_cannot():
  """C2D (every kernel 1xkxk) with the mean readout is blind to frame order; the ordered
  readout (per-frame features concatenated in time order) is not, and its classifier reads
  T' x C features."""
  kwargs = dict(stage_depths=(1, 1, 1, 1), base_width=4, temporal_kernel=1)
  x = np.random.RandomState(0).randn(2, 4, 32, 32, 3).astype(np.float32)
  reversed_x = x[:, ::-1]
  logits = {}
  for readout in ("mean", "ordered"):
    model = create_model("resnet3d", 5, kwargs, readout=readout, conv_strategy="xla")
    variables = model.init(jax.random.PRNGKey(0), x)
    features = model.apply(variables, x, method=model.features)
    stages = model.apply(variables, x, method=model.stages)
    t_out, c_out = stages["last"].shape[1], stages["last"].shape[-1]
    assert features.shape == ((2, t_out * c_out) if readout == "ordered" else (2, c_out))
    np.testing.assert_allclose(  # frame t's block is frame t's spatial mean
        features.reshape(2, -1, c_out) if readout == "ordered" else features,
        jnp.mean(stages["last"], axis=(2, 3)) if readout == "ordered"
        else jnp.mean(stages["last"], axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    logits[readout] = (model.apply(variables, x), model.apply(variables, reversed_x))
  np.testing.assert_allclose(*logits["mean"], rtol=1e-5, atol=1e-6)  # order-blind
  assert np.abs(logits["ordered"][0] - logits["ordered"][1]).max() > 1e-3  # order-aware
  with pytest.raises(ValueError, match="unknown readout 'max'"):
    create_model("resnet3d", 5, kwargs, readout="max")

