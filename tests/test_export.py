"""``python -m kpsem_jax.export``: an artifact that runs with JAX alone and equals the predictor."""

import json
import os
import subprocess
import sys

import numpy as np

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
