"""KPSEM and MF-KPSEM in JAX against the independent PyTorch reference (kpsem_jax/testing/torch_kpsem.py)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kpsem_jax import checkpoint, convert  # noqa: E402
from kpsem_jax.inference import load_predictor  # noqa: E402
from kpsem_jax.kpsem import KPSEM  # noqa: E402
from test_convert import TINY, relative_error, save, torch_logits  # noqa: E402
from kpsem_jax.testing.torch_kpsem import KPSEM as TorchKPSEM, MF_KPSEM  # noqa: E402
from kpsem_jax.testing.torch_mfnet import MFNET_3D, randomize  # noqa: E402

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
