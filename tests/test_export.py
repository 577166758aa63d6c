"""``python -m kpsem_jax.export``: an artifact that runs with JAX alone and equals the predictor."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kpsem_jax import export
from kpsem_jax.inference.predictor import load_predictor
from kpsem_jax.testing import tiny_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "kpsem_jax.export", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_the_exported_predictor_equals_load_predictor_without_the_model_code(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  out = tmp_path / "predictor.bin"
  result = run_cli(f"--checkpoint={tmp_path / 'ckpt'}", f"--output={out}", "--batch=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "uint8 clips (3, 8, 32, 32, 3) -> logits (3, 6), for cpu, cuda" in result.stdout
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".predictor")]  # no temp file
  labels = json.loads((tmp_path / "predictor.bin.json").read_text())
  assert labels["class_names"] == list(tiny_models.CLASSES)
  assert labels["input"] == {"shape": [3, 8, 32, 32, 3], "dtype": "uint8"}
  again = run_cli(f"--checkpoint={tmp_path / 'ckpt'}", f"--output={out}")
  assert again.returncode == 1 and again.stderr.strip() == (
      f"error: --output={out} exists: pass --overwrite to replace it")
  # In a fresh process that imports JAX only (no kpsem_jax, no flax):
  script = ("import sys, jax, numpy as np\n"
            f"e = jax.export.deserialize(bytearray(open({str(out)!r}, 'rb').read()))\n"
            "clips = np.random.default_rng(0).integers(0, 255, e.in_avals[0].shape, np.uint8)\n"
            "np.save(sys.argv[1], np.asarray(e.call(clips)))\n"
            "assert not [m for m in sys.modules if m.startswith(('kpsem_jax', 'flax'))]\n")
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.npy")],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  clips = np.random.default_rng(0).integers(0, 255, (3, 8, 32, 32, 3), np.uint8)
  want = load_predictor(str(tmp_path / "ckpt")).uint8_logits(clips)
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, atol=1e-4, rtol=0)


def test_the_artifact_has_no_custom_calls_and_both_platforms(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt", kpsem=True)
  exported = export.export_predictor(str(tmp_path / "ckpt"), batch=1)
  assert exported.platforms == ("cpu", "cuda")
  assert "stablehlo.custom_call" not in exported.mlir_module()  # no CPU kernel inside
  assert exported.in_avals[0].dtype == np.uint8


def test_bad_checkpoint_or_output_is_one_line(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  (tmp_path / "a_file").write_text("x")
  for args, message in (
      ((f"--checkpoint={tmp_path / 'nothing'}", f"--output={tmp_path / 'p.bin'}"),
       f"error: {tmp_path / 'nothing'} holds no kpsem-jax checkpoint"),
      ((f"--checkpoint={tmp_path / 'ckpt'}", f"--output={tmp_path / 'a_file' / 'p.bin'}"),
       f"error: --output={tmp_path / 'a_file' / 'p.bin'}: not a file path in an existing folder"),
  ):
    result = run_cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().startswith(message), result.stderr
  assert not (tmp_path / "p.bin").exists()


def _perturbed(variables, seed=0):
  """``variables`` with every leaf moved at random, BatchNorm's running statistics included
  (positive variances), so no folded weight is an identity."""
  import jax  # pylint: disable=import-outside-toplevel
  leaves, tree = jax.tree.flatten_with_path(variables)
  rng = np.random.default_rng(seed)
  moved = []
  for path, leaf in leaves:
    noise = rng.normal(0, 0.1, np.shape(leaf)).astype(np.float32)
    if "var" in jax.tree_util.keystr(path):
      moved.append(np.asarray(leaf) * np.exp(noise))
    else:
      moved.append(np.asarray(leaf) + noise)
  return jax.tree.unflatten(tree, moved)


def _onnx_logits(model, clips):
  import onnxruntime  # pylint: disable=import-outside-toplevel
  session = onnxruntime.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
  return session.run(None, {"clips": clips})[0]


@pytest.mark.parametrize("backbone,kpsem", [("mfnet3d", False), ("mfnet3d", True),
                                            ("resnet3d", True)])
def test_the_onnx_lowering_of_each_model_equals_jax(backbone, kpsem):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from kpsem_jax.inference import onnx_lowering  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import create_model, normalize  # pylint: disable=import-outside-toplevel
  spec = tiny_models.spec(kpsem)
  if backbone == "resnet3d":
    spec.update(backbone="resnet3d", kpsem_at="res3",
                backbone_kwargs=dict(stage_depths=(1, 1, 1, 1), base_width=4, temporal_kernel=3))
  model = create_model(**spec, conv_strategy="xla")
  clips = np.random.default_rng(1).integers(0, 255, (2, 8, 32, 32, 3), np.uint8)
  variables = _perturbed(model.init(jax.random.PRNGKey(0), normalize(jnp.asarray(clips))))

  def logits(c):
    return model.apply(variables, normalize(c), train=False)

  onnx_model = onnx_lowering.to_onnx(logits, [jax.ShapeDtypeStruct(clips.shape, jnp.uint8)],
                                     ["clips"], ["logits"])
  want = np.asarray(jax.jit(logits)(clips))
  np.testing.assert_allclose(_onnx_logits(onnx_model, clips), want, atol=1e-4, rtol=1e-4)
  assert np.abs(want).max() > 0.05  # logits that a wrong weight would change


def test_point_gathers_and_an_unknown_primitive():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import onnxruntime  # pylint: disable=import-outside-toplevel
  from kpsem_jax.inference import onnx_lowering  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)

  def gathers(x):
    index = jnp.argmax(x, axis=1)  # (3, 7)
    along = jnp.take_along_axis(x, index[:, None, :], axis=1)  # batched over 0 and 2
    table = jnp.arange(5.0)[index % 5]  # a plain lookup
    picked = x[jnp.arange(3)[:, None], (index + 1) % 5, jnp.arange(7)[None, :]]  # 3 coordinates
    return along[:, 0] * table + picked

  model = onnx_lowering.to_onnx(gathers, [jax.ShapeDtypeStruct(x.shape, jnp.float32)], ["x"],
                                ["y"])
  session = onnxruntime.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
  np.testing.assert_allclose(session.run(None, {"x": x})[0], np.asarray(gathers(x)),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(onnx_lowering.LoweringError, match="no ONNX lowering for the JAX "
                     "primitive 'sort'"):
    onnx_lowering.to_onnx(lambda x: jnp.sort(x, axis=1),
                          [jax.ShapeDtypeStruct(x.shape, jnp.float32)], ["x"], ["y"])


def test_the_onnx_export_runs_in_onnx_runtime_alone_and_names_the_classes(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")  # MF-KPSEM
  out = tmp_path / "model.onnx"
  result = run_cli(f"--checkpoint={tmp_path / 'ckpt'}", f"--output={out}", "--batch=2",
                   "--format=onnx")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "uint8 clips (2, 8, 32, 32, 3) -> logits (2, 6)" in result.stdout
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".model")]  # no temp file
  # In a fresh process that imports ONNX Runtime only (no JAX, no kpsem_jax):
  script = ("import json, sys, numpy as np, onnxruntime\n"
            f"s = onnxruntime.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider'])\n"
            "names = json.loads(s.get_modelmeta().custom_metadata_map['class_names'])\n"
            "clips = np.random.default_rng(0).integers(0, 255, (2, 8, 32, 32, 3), np.uint8)\n"
            "np.save(sys.argv[1], s.run(None, {'clips': clips})[0])\n"
            "print(json.dumps(names))\n"
            "assert not [m for m in sys.modules if m.startswith(('kpsem_jax', 'jax', 'flax'))]\n")
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.npy")],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout) == list(tiny_models.CLASSES)
  clips = np.random.default_rng(0).integers(0, 255, (2, 8, 32, 32, 3), np.uint8)
  want = load_predictor(str(tmp_path / "ckpt")).uint8_logits(clips)
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, atol=1e-4, rtol=0)
