"""The distribution: ``kpsem_jax`` and nothing generic beside it, working from any directory
and from a wheel as from the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wheel(tmp_path):
  """Builds the wheel from a copy of the sources (the checkout gets no build/ folder)."""
  src = tmp_path / "src"
  for name in ("kpsem_jax", "data", "configs"):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("setup.py", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                 check=True, capture_output=True, timeout=300)
  (wheel,) = (tmp_path / "dist").glob("kpsem_jax-*.whl")
  return wheel


def test_the_wheel_installs_only_kpsem_jax_and_prepares_from_outside_the_repo(tmp_path):
  wheel = _wheel(tmp_path)
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split("/")[0] for n in names} == {"kpsem_jax", "kpsem_jax-0.1.0.dist-info"}
  # The builders and configs travel inside the package, with the C++ sources built on use.
  for path in ("kpsem_jax/builders/synthetic_motion/synthetic_motion_dataset_builder.py",
               "kpsem_jax/configs/synthetic.py", "kpsem_jax/data/resample.cc",
               "kpsem_jax/models/cpu_kernels/onednn_conv.cc"):
    assert path in names, path
  installed, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
  zipfile.ZipFile(wheel).extractall(installed)  # what pip puts in site-packages
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(installed))
  where = subprocess.run(
      [sys.executable, "-c", "import kpsem_jax.builders, kpsem_jax.configs\n"
       "from kpsem_jax.config_base import load_config\n"
       "print(kpsem_jax.builders.__file__, kpsem_jax.configs.__file__, "
       "load_config('synthetic_c2d', 'mfnet').dataset.name)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert where.returncode == 0, where.stderr[-2000:]
  builders, configs, dataset = where.stdout.split()
  assert builders.startswith(str(installed)) and configs.startswith(str(installed))
  assert dataset == "synthetic_motion"
  run = subprocess.run([sys.executable, "-m", "kpsem_jax.prepare", "synthetic_motion",
                        "--config=tiny", f"--data_dir={tmp_path / 'tfds'}"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "train" in run.stdout + run.stderr and "16 examples" in run.stdout + run.stderr
  assert (tmp_path / "tfds" / "synthetic_motion" / "tiny").is_dir()


def test_train_py_reads_a_config_by_path_from_any_directory(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                        f"--config={os.path.join(ROOT, 'configs', 'synthetic_c2d.py')}:mfnet",
                        "--config_help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "model.backbone" in run.stdout and "mfnet3d" in run.stdout
