"""AReSE maths: properties from the paper and equality with a naive loop version."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax.models import arese as A
from kpsem_jax.models.kpsem import KPSEM
from kpsem_jax.testing.naive_arese import naive_arese, naive_centre_mlp

arese = jax.jit(A.arese, static_argnums=(2, 3))


def blob_clip(x0, y0, dx, dy, frames=4, size=16, channels=2, amp=5.0):
  """A compact bright disk (zero elsewhere, like post-ReLU features) moving (dx, dy)/frame."""
  yy, xx = np.mgrid[0:size, 0:size]
  f = np.zeros((frames, size, size, channels), np.float32)
  for t in range(frames):
    disk = np.maximum(0.0, 2.0 - np.hypot(xx - x0 - dx * t, yy - y0 - dy * t))
    for c in range(channels):
      f[t, :, :, c] = amp * (c + 1) * disk
  return jnp.asarray(f)


def equal_split(frames, k):
  return jnp.zeros((frames, 2, k - 1))


def test_split_positions_equal_and_ordered():
  np.testing.assert_allclose(A.split_positions(jnp.zeros((2,))), [-1 / 3, 1 / 3], atol=1e-6)
  pos = A.split_positions(jax.random.normal(jax.random.PRNGKey(0), (50, 3)) * 3)
  assert bool(jnp.all(jnp.diff(pos, axis=-1) > 0))
  assert bool(jnp.all((pos > -1) & (pos < 1)))


def test_masks_partition_the_frame():
  splits_x = A.split_positions(jnp.array([[0.3, -0.2]]))
  splits_y = A.split_positions(jnp.array([[-0.5, 0.1]]))
  for temperature in (0.0, 0.1, 1.0):
    m = A.region_masks(splits_x, splits_y, 7, 9, temperature)
    assert m.shape == (1, 9, 7, 9)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  hard = A.region_masks(splits_x, splits_y, 7, 9, 0.0)
  assert set(np.unique(hard).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, 2), (-1, 1), (2, -1)])
def test_k1_recovers_the_exact_shift(dx, dy):
  size = 16
  f = blob_clip(5, 6, dx, dy, size=size)
  out = arese(f, equal_split(4, 1))
  expected = np.broadcast_to([2 * dx / size, 2 * dy / size], out.rkps.shape)
  np.testing.assert_allclose(out.rkps, expected, atol=1e-6)


@pytest.mark.parametrize("x0,y0,dx,dy", [(2, 2, 1, 0), (12, 4, -1, 0), (4, 12, 0, -1),
                                         (12, 3, 0, 1), (2, 2, 1, 1), (12, 12, -1, -1)])
def test_k4_recovers_the_direction(x0, y0, dx, dy):
  size = 16
  out = arese(blob_clip(x0, y0, dx, dy, size=size), equal_split(4, 2))
  mean = np.asarray(out.rkps).mean(axis=0)  # (C, 2)
  for c in range(mean.shape[0]):
    direction = mean[c] / np.linalg.norm(mean[c])
    np.testing.assert_allclose(direction, np.array([dx, dy]) / np.hypot(dx, dy), atol=1e-2)
  # The region that holds the blob shifts by exactly the blob's motion.
  region = (y0 // (size // 2)) * 2 + x0 // (size // 2)
  np.testing.assert_allclose(out.shifts[:, region, 0], np.broadcast_to(
      [2 * dx / size, 2 * dy / size], (3, 2)), atol=1e-3)


def test_static_clip_gives_zero_shifts():
  static = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 5)), (4, 8, 8, 5))
  out = arese(static, equal_split(4, 1))
  np.testing.assert_array_equal(out.rkps, 0.0)
  # K = 4: each region matches itself; Eq. 9's softmax leaks weight exp(-(10 - 1/(dV+0.1)))
  # to the other regions, negligible for a well-separated blob.
  out4 = arese(blob_clip(4, 4, 0, 0), equal_split(4, 2))
  assert float(jnp.abs(out4.rkps).max()) < 1e-3
  np.testing.assert_allclose(out4.shifts[:, 0], 0.0, atol=1e-3)


@pytest.mark.parametrize("value", [0.0, 3.0])
def test_constant_maps_are_finite_and_static(value):
  """No NaN for flat maps. K = 1 gives zero; for K > 1 the paper's Eq. 9 weighs all
  regions equally when their values tie, so the output is non-zero but the same for
  every frame pair, and bounded by the map's extent."""
  f = jnp.full((4, 6, 6, 3), value)
  for k in (1, 2, 3):
    out = arese(f, equal_split(4, k))
    assert bool(jnp.all(jnp.isfinite(out.rkps)))
    if k == 1:
      np.testing.assert_array_equal(out.rkps, 0.0)
    np.testing.assert_allclose(out.rkps, jnp.broadcast_to(out.rkps[:1], out.rkps.shape), atol=1e-6)
    assert float(jnp.abs(out.rkps).max()) <= 2.0


def test_horizontal_flip_negates_x_shifts():
  f = jax.random.normal(jax.random.PRNGKey(2), (5, 8, 10, 4))
  for k in (1, 2, 3):
    out = arese(f, equal_split(5, k))
    flipped = arese(f[:, :, ::-1], equal_split(5, k))
    np.testing.assert_allclose(flipped.rkps[..., 0], -out.rkps[..., 0], atol=1e-5)
    np.testing.assert_allclose(flipped.rkps[..., 1], out.rkps[..., 1], atol=1e-5)


def test_fixed_regions_permuting_channels_permutes_shifts():
  f = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 8, 8, 6))
  perm = np.array([3, 0, 5, 1, 4, 2])
  module = KPSEM(num_regions=4, num_sets=3, adaptive=False, reduction_channels=(4,))
  params = jax.jit(module.init)(jax.random.PRNGKey(0), f)
  apply = jax.jit(lambda x: module.apply(params, x, mutable=["intermediates"]))
  _, state = apply(f)
  _, state_p = apply(f[..., perm])
  rkps = state["intermediates"]["arese"][0].rkps  # (G, B, T-1, C, 2)
  rkps_p = state_p["intermediates"]["arese"][0].rkps
  assert float(jnp.abs(rkps).max()) > 1e-3
  # Equal up to float32 rounding: XLA may compute a channel in a vector lane or in the loop
  # tail, depending on where the permutation puts it.
  np.testing.assert_allclose(rkps_p, rkps[:, :, :, perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (2, 0.1), (2, 0.0), (3, 0.5)])
def test_arese_matches_naive_loops(k, temperature):
  f = jax.random.normal(jax.random.PRNGKey(4), (3, 6, 7, 3))
  logits = jax.random.normal(jax.random.PRNGKey(5), (3, 2, k - 1))
  out = jax.jit(A.arese, static_argnums=(2,))(f, logits, temperature)
  ref = naive_arese(np.asarray(f), np.asarray(logits), temperature)
  for name in ("rkps", "coords", "values", "shifts"):
    np.testing.assert_allclose(getattr(out, name), ref[name], atol=1e-5, err_msg=name)


def test_vmapped_multi_set_kpsem_matches_naive_loops():
  """The jitted module (vmap over G sets and batch) against per-set, per-example loops."""
  b, t, h, w, c, g = 2, 3, 6, 6, 4, 3
  f = jax.random.normal(jax.random.PRNGKey(6), (b, t, h, w, c))
  module = KPSEM(num_regions=4, num_sets=g, embed_dim=5, mlp_hidden=3, reduction_channels=(4,))
  variables = jax.jit(module.init)(jax.random.PRNGKey(7), f)
  # Non-zero centre MLP outputs so that every set splits differently.
  p = dict(variables["params"])
  p["mlp_w2"] = jax.random.normal(jax.random.PRNGKey(8), p["mlp_w2"].shape)
  p["mlp_b2"] = jax.random.normal(jax.random.PRNGKey(9), p["mlp_b2"].shape)
  apply = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))
  _, state = apply({"params": p}, f)
  got = state["intermediates"]["arese"][0]
  for gi in range(g):
    for bi in range(b):
      logits = naive_centre_mlp(f[bi], p["mlp_w1"][gi], p["mlp_b1"][gi], p["mlp_w2"][gi],
                                p["mlp_b2"][gi])
      ref = naive_arese(np.asarray(f[bi]), logits, module.mask_temperature)
      np.testing.assert_allclose(got.rkps[gi, bi], ref["rkps"], atol=1e-5)
  assert float(jnp.abs(got.rkps[0] - got.rkps[1]).max()) > 1e-4  # sets really differ


_ONE_SET_SCRIPT = r"""
import json, sys
from kpsem_jax import jax_options
jax_options.configure()  # as every entry point: before JAX starts its backend
import jax, jax.numpy as jnp, numpy as np
from kpsem_jax.models.kpsem import KPSEM
x = jnp.asarray(np.random.RandomState(0).randn(16, 8, 12, 12, 32), jnp.float32)
grads = {}
for g in (1, 2):
  m = KPSEM(num_regions=4, num_sets=g, embed_dim=8, reduction_channels=(16, 16))
  p = dict(m.init(jax.random.PRNGKey(0), x)["params"])
  if g == 2:  # set 0 = the G=1 model's set (seed 0), set 1 silenced: zero embedding
    ref = KPSEM(num_regions=4, num_sets=1, embed_dim=8, reduction_channels=(16, 16)).init(
        jax.random.PRNGKey(0), x)["params"]
    for k in ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "embed_w", "embed_b"):
      p[k] = jnp.concatenate([ref[k], jnp.zeros_like(ref[k])])
    p["reduce1"], p["reduce2"] = ref["reduce1"], ref["reduce2"]
  f = jax.jit(jax.grad(lambda p, x: jnp.sum(m.apply({"params": p}, x) ** 2)))
  for _ in range(3):  # the crash came on the second call of the compiled gradient
    out = f(p, x)
  grads[g] = {k: np.asarray(v)[:1].tolist() if k.startswith(("mlp", "embed")) else None
              for k, v in out.items()}
  grads[g]["reduce1"] = np.asarray(out["reduce1"]["kernel"]).tolist()
json.dump(grads, sys.stdout)
"""


def test_one_arese_set_gradient_runs_and_equals_two_sets_with_one_silenced():
  """G=1 (the paper's one-set ablation) once crashed XLA:CPU (YNNPACK fusion) on its 2nd step.

  Run in a fresh process so a crash fails this test rather than the session; its gradients
  must equal those of G=2 whose second set has a zero embedding.
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", _ONE_SET_SCRIPT], capture_output=True, text=True,
                        env=env, timeout=600, check=False)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
  grads = json.loads(proc.stdout)
  for k in ("mlp_w1", "mlp_w2", "embed_w", "embed_b", "reduce1"):
    np.testing.assert_allclose(grads["1"][k], grads["2"][k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert np.abs(np.asarray(grads["1"]["embed_w"])).max() > 0


requires_cpu_kernels = pytest.mark.skipif(
    not A.cpu_kernels.available(),
    reason=f"CPU kernels not built: {A.cpu_kernels.unavailable_reason()}")


@requires_cpu_kernels
def test_regional_argmax_kernel_equals_jnp_argmax_ties_and_nans_included():
  """The C++ argmax returns jnp.argmax's indices: first maximum, first NaN, broadcasting."""
  rng = np.random.default_rng(0)
  t, k, p, c = 3, 4, 10, 6
  # Three feature levels and hard masks: exact ties in most rows.
  features = rng.integers(0, 3, (t, p, c)).astype(np.float32)
  features[1, 4, 2] = features[1, 7, 2] = np.nan  # first NaN wins
  features[2, :, 5] = np.nan
  masks = (rng.uniform(size=(t, k, p)) < 0.4).astype(np.float32)
  masks[0, 0] = 0.0  # a region with no pixel: every score is penalised alike
  penalty = rng.uniform(1.0, 4.0, (t, c)).astype(np.float32)
  kernel = functools.partial(A.regional_argmax, strategy="cpu_kernel")
  want = np.asarray(jax.jit(A.regional_argmax)(features, masks, penalty))
  assert "kpsem_regional_argmax" in str(jax.make_jaxpr(kernel)(features, masks, penalty))
  assert "kpsem_regional_argmax" not in str(jax.make_jaxpr(A.regional_argmax)(
      features, masks, penalty))
  got = np.asarray(jax.jit(kernel)(features, masks, penalty))
  np.testing.assert_array_equal(got, want)
  assert got[1, :, 2].tolist() == [4] * k and got[2, :, 5].tolist() == [0] * k
  # Soft masks, vmapped over sets (masks batched) and clips (all batched), as in KPSEM:
  soft = rng.uniform(size=(2, 5, t, k, p)).astype(np.float32)
  feats = rng.normal(size=(5, t, p, c)).astype(np.float32)
  pens = rng.uniform(1.0, 4.0, (5, t, c)).astype(np.float32)
  batched = lambda fn: jax.jit(jax.vmap(jax.vmap(fn), in_axes=(None, 0, None)))  # noqa: E731
  np.testing.assert_array_equal(np.asarray(batched(kernel)(feats, soft, pens)),
                                np.asarray(batched(A.regional_argmax)(feats, soft, pens)))


@requires_cpu_kernels
def test_kpsem_with_the_argmax_kernel_equals_the_jnp_path():
  """The KPSEM module's output and gradient do not depend on which argmax ran."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 6, 6, 8)).astype(np.float32))
  results = {}
  for strategy in ("cpu_kernel", "jnp"):
    module = KPSEM(num_regions=4, num_sets=3, embed_dim=6, reduction_channels=(8, 8),
                   conv_strategy="xla", argmax_strategy=strategy)
    variables = module.init(jax.random.PRNGKey(0), x)
    fn = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))  # noqa: E731
    both = lambda v, x: jax.value_and_grad(fn, argnums=(0, 1))(v, x)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(both)(variables, x))
    assert ("kpsem_regional_argmax" in jaxpr) == (strategy == "cpu_kernel")
    results[strategy] = jax.jit(both)(variables, x)
  (value, grads), (want_value, want_grads) = results["cpu_kernel"], results["jnp"]
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_shift_weights_send_no_gradient_into_the_key_point_values_when_stopped():
  """The divergence ``"stopped"`` was made for: with it, Eq. 9's ``1 / (|dV| + 0.1)`` is not
  differentiated (the match between key points, like their argmax coordinates, gets no
  gradient); with ``"splits"`` and ``"paper"`` it is (key_points decides where the values'
  gradient goes); the forward is the same."""
  rng = np.random.default_rng(0)
  coords = jnp.asarray(rng.uniform(-1, 1, (3, 4, 5, 2)), jnp.float32)
  values = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 4, 5, 2)), jnp.float32)
  def grad(mode):
    return jax.grad(lambda v: jnp.sum(A.key_point_shifts(coords, v, match_gradient=mode)
                                      * weights))(values)
  np.testing.assert_array_equal(grad("stopped"), 0.0)
  assert float(jnp.abs(grad("splits")).max()) > 1e-3
  np.testing.assert_array_equal(grad("splits"), grad("paper"))
  # The forward is still Eq. 8-10 (the naive loops of kpsem_jax.testing agree elsewhere).
  affinity = 1.0 / (np.abs(values[:-1, :, None] - values[1:, None]) + 0.1)
  w = np.exp(affinity) / np.exp(affinity).sum(axis=2, keepdims=True)
  delta = coords[1:, None] - coords[:-1, :, None]
  for mode in A.MATCH_GRADIENTS:
    np.testing.assert_allclose(A.key_point_shifts(coords, values, match_gradient=mode),
                               (w[..., None] * delta).sum(axis=2), rtol=1e-5, atol=1e-6)


def test_kpsem_gradient_into_its_input_has_no_spikes():
  """The quantity that exploded (issue 19): the gradient of KPSEM's output, projected on a
  unit-norm random direction, with respect to a post-ReLU feature map. Differentiating
  Eq. 9 gave 1.5 at single argmax pixels (norm 4.3); without it, 7e-4 (norm 0.04)."""
  rng = np.random.default_rng(0)
  features = jnp.asarray(np.maximum(rng.normal(size=(2, 8, 16, 16, 32)), 0), jnp.float32)
  module = KPSEM(num_regions=4, num_sets=4, embed_dim=8, reduction_channels=(16, 16),
                 argmax_strategy="jnp", conv_strategy="xla")
  variables = module.init(jax.random.PRNGKey(0), features)
  out = module.apply(variables, features)
  direction = jnp.asarray(rng.normal(size=out.shape), jnp.float32) / np.sqrt(out.size)
  g = jax.grad(lambda f: jnp.sum(module.apply(variables, f) * direction))(features)
  assert float(jnp.max(jnp.abs(g))) < 0.05
  assert float(jnp.linalg.norm(g)) < 0.5


def test_kpsem_output_at_each_step_depends_on_its_two_frames_only():
  """P_out is (T-1) blocks, block t a function of frames t and t+1 alone (the reduction
  convolutions have a time kernel of 1), so the linear classifier adds per-step terms:
  what no single step's shifts show (a rotation's sense, without the key points' places)
  the sum cannot recover (docs/experiments.md)."""
  t, c, red = 6, 5, 4
  features = jax.random.uniform(jax.random.PRNGKey(0), (1, t, 8, 8, c))
  module = KPSEM(num_regions=4, num_sets=2, embed_dim=6, mlp_hidden=3, reduction_channels=(red,),
                 argmax_strategy="jnp", conv_strategy="xla")
  params = module.init(jax.random.PRNGKey(1), features)
  params = jax.tree_util.tree_map_with_path(  # adaptive splits that move with the features
      lambda path, p: jax.random.normal(jax.random.PRNGKey(2), p.shape)
      if "mlp_w2" in jax.tree_util.keystr(path) else p, params)
  base = module.apply(params, features).reshape(t - 1, red)
  for frame in range(t):
    changed = features.at[:, frame].set(jax.random.uniform(jax.random.PRNGKey(3 + frame),
                                                           (1, 8, 8, c)))
    out = module.apply(params, changed).reshape(t - 1, red)
    moved = np.flatnonzero(np.abs(np.asarray(out - base)).max(axis=1) > 1e-6)
    touching = [s for s in (frame - 1, frame) if 0 <= s < t - 1]
    assert set(moved) <= set(touching) and len(moved) > 0, (frame, moved)


def logits_for(splits_x, splits_y):
  """Split logits ``(T, 2, k-1)`` that :func:`A.split_positions` maps to the given lines."""
  def one(lines):
    edges = np.concatenate([[-1.0], lines, [1.0]])
    widths = np.diff(edges)
    return np.log(widths[1:] / widths[0])
  return np.stack([np.stack([one(x), one(y)]) for x, y in zip(splits_x, splits_y)])


@pytest.mark.parametrize("k", [2, 3])
def test_soft_mask_module_converges_to_the_papers_hard_equations(k):
  """The printed Eq. 6-12 (hard regions, V = F at the key point; testing/paper_arese.py)
  against our soft-mask forward: equal at temperature 0 and 0.01 px, and the departure at
  the default 0.1 px shrinks as the temperature goes to 0."""
  from kpsem_jax.testing.paper_arese import paper_arese  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(k)
  t, h, w, c = 3, 7, 9, 4
  f = np.maximum(rng.normal(size=(t, h, w, c)), 0.0).astype(np.float32)  # post-ReLU, ties
  # Lines between pixel centres (at least a quarter pixel from any), off-centre, moving from
  # frame to frame, every region non-empty.
  def lines(n):
    boundaries = np.sort(rng.choice(np.arange(2, n - 1), size=(k - 1,), replace=False))
    return -1.0 + (2.0 * boundaries + rng.uniform(-0.5, 0.5, k - 1)) / n
  splits_x = np.stack([lines(w) for _ in range(t)])
  splits_y = np.stack([lines(h) for _ in range(t)])
  ref = paper_arese(f, splits_x, splits_y)
  logits = jnp.asarray(logits_for(splits_x, splits_y), jnp.float32)
  errors = {}
  for temperature in (0.0, 0.01, 0.03, 0.1):
    out = jax.jit(A.arese, static_argnums=(2,))(jnp.asarray(f), logits, temperature)
    np.testing.assert_allclose(out.splits_x, splits_x, atol=1e-6)
    errors[temperature] = max(
        float(np.abs(np.asarray(out.rkps) - ref["rkps_per_region"].sum(axis=1)).max()),
        float(np.abs(np.asarray(out.values) - ref["values"]).max()),
        float(np.abs(np.asarray(out.region_weights) - ref["region_weights"]).max()))
    if temperature <= 0.01:
      for name in ("coords", "values", "shifts", "region_weights"):
        np.testing.assert_allclose(getattr(out, name), ref[name], atol=1e-5, err_msg=name)
      np.testing.assert_allclose(out.rkps, ref["rkps_per_region"].sum(axis=1), atol=1e-5)
  assert errors[0.1] > errors[0.03] > errors[0.01]
  assert errors[0.01] < 1e-5 < errors[0.1]


def test_split_movement_in_map_pixels():
  from kpsem_jax.experiments import split_movement  # pylint: disable=import-outside-toplevel
  # (G=1, N=2 clips, T=1, k-1=1): x lines at +0.25 and -0.25 (2 px either side on W=16),
  # y lines at the centre
  sx = np.array([[[[0.25]], [[-0.25]]]])
  sy = np.zeros_like(sx)
  m = split_movement.movement(sx, sy, width=16, height=8)
  assert m["from_start"] == pytest.approx(1.0)  # (2 + 2 + 0 + 0) / 4
  assert m["largest_from_start"] == pytest.approx(2.0)
  assert m["across_videos"] == pytest.approx(1.0)  # std over clips: x 2 px, y 0
  np.testing.assert_allclose(split_movement.equal_splits(3), [-1 / 3, 1 / 3])
  still = split_movement.movement(np.full((1, 4, 2, 2), [-1 / 3, 1 / 3]),
                                  np.full((1, 4, 2, 2), [-1 / 3, 1 / 3]), 12, 12)
  assert still == pytest.approx(dict(from_start=0.0, across_videos=0.0, largest_from_start=0.0,
                                     spread=0.0))


def test_eq12_kept_per_region_sums_to_the_default_and_feeds_k_times_the_channels():
  f = jax.random.normal(jax.random.PRNGKey(11), (3, 6, 6, 5))
  logits = jax.random.normal(jax.random.PRNGKey(12), (3, 2, 1))
  summed = A.arese(f, logits)
  kept = A.arese(f, logits, sum_regions=False)
  assert kept.rkps.shape == (2, 4, 5, 2)
  np.testing.assert_allclose(kept.rkps.sum(axis=1), summed.rkps, rtol=1e-6, atol=1e-7)
  x = jax.random.normal(jax.random.PRNGKey(13), (2, 3, 6, 6, 5))
  module = KPSEM(num_regions=4, num_sets=2, embed_dim=4, reduction_channels=(3,), sum_regions=False)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["reduce1"]["kernel"].shape == (1, 3, 4 * 5, 3)  # K x C in
  assert module.apply(variables, x).shape == (2, 2 * 3)


def test_the_sorted_frames_control_cannot_tell_a_clip_from_its_reversal():
  x = jax.random.normal(jax.random.PRNGKey(14), (2, 5, 6, 6, 4))
  reversed_x = x[:, ::-1]
  for order, same in (("sorted", True), ("time", False)):
    module = KPSEM(num_regions=4, num_sets=2, embed_dim=4, reduction_channels=(3,),
                   frame_order=order)
    variables = module.init(jax.random.PRNGKey(0), x)
    p = dict(variables["params"])
    p["mlp_w2"] = jax.random.normal(jax.random.PRNGKey(15), p["mlp_w2"].shape)
    out, out_rev = (np.asarray(module.apply({"params": p}, v)) for v in (x, reversed_x))
    assert np.allclose(out, out_rev, atol=1e-6) == same, order
  with pytest.raises(ValueError, match="unknown frame_order"):
    KPSEM(frame_order="random").init(jax.random.PRNGKey(0), x)
