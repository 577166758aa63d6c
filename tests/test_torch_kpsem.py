"""KPSEM and MF-KPSEM in JAX against the PyTorch transliteration (kpsem_jax/testing/torch_kpsem.py).

The transliteration repeats every interpretive choice of ``arese.py`` (soft masks, softmax
splits, the penalty, V as the penalised score, the sum over K, the pooled MLP input): it
catches framework, vmap and indexing bugs, not a misreading of the paper. The paper's
printed equations are checked by ``tests/test_arese.py`` against ``testing/paper_arese.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kpsem_jax import convert
from kpsem_jax.inference.predictor import load_predictor  # noqa: E402
from kpsem_jax.models.kpsem import KPSEM  # noqa: E402
from kpsem_jax.testing.torch_kpsem import KPSEM as TorchKPSEM, MF_KPSEM  # noqa: E402
from kpsem_jax.train import checkpoint  # noqa: E402
from kpsem_jax.testing.torch_mfnet import (  # noqa: E402
    MFNET_3D, TINY, randomize, relative_error, save, torch_logits)

torch.set_num_threads(2)


@pytest.mark.parametrize("regions, sets", [(4, 3), (9, 2), (1, 1)])
def test_kpsem_matches_the_pytorch_reference(regions, sets):
  rng = np.random.RandomState(regions)
  f = rng.randn(2, 5, 7, 6, 8).astype(np.float32)  # (B, T, H, W, C): H != W on purpose
  module = KPSEM(num_regions=regions, num_sets=sets, embed_dim=6, mlp_hidden=5,
                 reduction_channels=(4, 3))
  params = jax.device_get(module.init(jax.random.PRNGKey(0), f)["params"])
  if regions > 1:  # non-zero centre MLP outputs: every set and frame splits differently
    params = dict(params, mlp_w2=rng.randn(*params["mlp_w2"].shape).astype(np.float32),
                  mlp_b2=rng.randn(*params["mlp_b2"].shape).astype(np.float32))
  else:  # K = 1 has no centre MLP; the reference takes an empty one
    params = dict(params, mlp_w1=np.zeros((sets, 8, 5), np.float32),
                  mlp_b1=np.zeros((sets, 5), np.float32),
                  mlp_w2=np.zeros((sets, 5, 0), np.float32), mlp_b2=np.zeros((sets, 0), np.float32))
  want = np.asarray(module.apply({"params": params}, f))
  with torch.no_grad():
    got = TorchKPSEM(params, regions)(torch.from_numpy(f.transpose(0, 4, 1, 2, 3).copy())).numpy()
  assert got.shape == want.shape == (2, 4 * 3)
  assert np.abs(want).max() > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _relative_error(got, want):
  return float(np.linalg.norm(np.asarray(got) - np.asarray(want)) /
               max(np.linalg.norm(np.asarray(want)), 1e-30))


@pytest.mark.parametrize("match_gradient", ["paper", "splits", "stopped"])
def test_kpsem_gradients_match_pytorch_autograd(match_gradient):
  """Every parameter's gradient and the input's, against PyTorch autograd on the same
  weights: "paper" is autograd's derivative of our soft-mask forward (nothing detached but
  the argmax indices), "splits" the reference with the features and penalty detached in the
  key point scores, "stopped" with the values detached in Eq. 9."""
  rng = np.random.RandomState(7)
  f = rng.randn(2, 5, 7, 6, 8).astype(np.float32)  # continuous values: no argmax ties
  cotangent = rng.randn(2, 4 * 3).astype(np.float32)
  module = KPSEM(num_regions=4, num_sets=3, embed_dim=6, mlp_hidden=5,
                 reduction_channels=(4, 3), match_gradient=match_gradient,
                 argmax_strategy="jnp", conv_strategy="xla")
  params = jax.device_get(module.init(jax.random.PRNGKey(0), f)["params"])
  params = dict(params, mlp_w2=rng.randn(*params["mlp_w2"].shape).astype(np.float32),
                mlp_b2=rng.randn(*params["mlp_b2"].shape).astype(np.float32))

  def loss(p, x):
    return jnp.sum(module.apply({"params": p}, x) * cotangent)

  grad_params, grad_input = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, f)
  reference = TorchKPSEM(params, 4, match_gradient=match_gradient)
  x = torch.from_numpy(f.transpose(0, 4, 1, 2, 3).copy()).requires_grad_()
  (reference(x) * torch.from_numpy(cotangent)).sum().backward()
  want = reference.parameter_grads()
  flat_got = jax.tree_util.tree_leaves_with_path(jax.device_get(grad_params))
  assert len(flat_got) == len(jax.tree_util.tree_leaves(want)) == 10
  for path, got in flat_got:
    expected = want
    for key in path:
      expected = expected[key.key]
    assert np.abs(expected).max() > 0, path  # every parameter has a gradient here
    assert _relative_error(got, expected) <= 1e-4, (path, _relative_error(got, expected))
  input_grad = x.grad.numpy().transpose(0, 2, 3, 4, 1)
  assert _relative_error(grad_input, input_grad) <= 1e-4, _relative_error(grad_input,
                                                                          input_grad)


def _kpsem_gradients(f, cotangent, mode):
  """``(params, split-MLP gradients, input gradient, output)`` of a small KPSEM at its
  initialisation (the split MLP's last layer at zero) in ``match_gradient`` ``mode``."""
  module = KPSEM(num_regions=4, num_sets=2, embed_dim=6, mlp_hidden=5,
                 reduction_channels=(4, 3), match_gradient=mode)
  params = module.init(jax.random.PRNGKey(0), f)["params"]
  g_params, g_input = jax.jit(jax.grad(
      lambda p, x: jnp.sum(module.apply({"params": p}, x) * cotangent), argnums=(0, 1)))(params, f)
  mlp = {n: np.asarray(g_params[n]) for n in ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2")}
  return params, mlp, np.asarray(g_input), np.asarray(module.apply({"params": params}, f))


def test_the_match_gradient_modes_share_the_forward_and_differ_where_they_say():
  """At initialisation: the forward is bit for bit the same in every mode. "paper" reaches
  the split MLP also through the match weights and the input with Eq. 9's spikes. The
  default "splits" gives every split-MLP parameter "paper"'s gradient (equal, not merely
  within 10x) and the input "stopped"'s (no spikes into the backbone); "stopped"'s
  split-MLP gradient, through Eq. 11's regional weights only, is far smaller."""
  rng = np.random.RandomState(3)
  f = np.maximum(rng.randn(2, 5, 8, 8, 6), 0).astype(np.float32)  # post-ReLU features
  cotangent = rng.randn(2, 4 * 3).astype(np.float32)
  got = {mode: _kpsem_gradients(f, cotangent, mode) for mode in ("paper", "splits", "stopped")}
  for mode in ("splits", "stopped"):
    np.testing.assert_array_equal(got[mode][3], got["paper"][3])  # the same forward
  norm = {mode: np.linalg.norm(np.concatenate([np.ravel(g) for g in got[mode][1].values()]))
          for mode in got}
  for name, g in got["splits"][1].items():
    np.testing.assert_allclose(g, got["paper"][1][name], rtol=1e-5, atol=1e-8, err_msg=name)
  assert norm["paper"] > 10 * norm["stopped"] > 0
  np.testing.assert_allclose(got["splits"][2], got["stopped"][2], rtol=1e-5, atol=1e-7)
  assert np.linalg.norm(got["paper"][2]) > 2 * np.linalg.norm(got["splits"][2])


def test_converted_mf_kpsem_matches_the_pytorch_mf_kpsem(tmp_path):
  """The converter's mf_kpsem (MFNet weights + fresh KPSEM) equals PyTorch MF-KPSEM on them."""
  net = randomize(MFNET_3D(num_classes=7, **TINY), seed=3)
  path = save(net.state_dict(), str(tmp_path / "mfnet.pth"))
  convert.run(path, str(tmp_path / "mf_kpsem"), model="mf_kpsem", log=lambda *a: None)
  variables, _ = checkpoint.load_variables(str(tmp_path / "mf_kpsem"))
  params = jax.device_get(variables["params"])
  # Non-zero centre MLP outputs, so that the regions are not the fixed equal split.
  kp = dict(params["kpsem"])
  rng = np.random.RandomState(0)
  kp["mlp_w2"] = rng.randn(*kp["mlp_w2"].shape).astype(np.float32)
  variables = dict(variables, params=dict(params, kpsem=kp))
  checkpoint.save_variables(str(tmp_path / "edited"), variables,
                            checkpoint.load_variables(str(tmp_path / "mf_kpsem"))[1])
  torch_net = MF_KPSEM(kp, params["classifier"], num_classes=7, **TINY)
  missing, unexpected = torch_net.load_state_dict(
      {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}, strict=False)
  assert not unexpected and all(k.startswith(("classifier.", "kpsem.")) for k in missing)
  clips = np.random.default_rng(0).standard_normal((2, 16, 64, 64, 3)).astype(np.float32)
  want = torch_logits(torch_net, clips)
  got = load_predictor(str(tmp_path / "edited")).logits(clips)
  assert relative_error(got, want) < 1e-4
