"""Hostile inputs and faults: one clear line each, nothing silent, nothing lost."""

import errno
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kpsem_jax import checkpoint, prepare, trainer
from kpsem_jax.workdir_lock import WorkdirInUseError, WorkdirLock
import tiny_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(*args, timeout=300):
  return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def one_error_line(result):
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-2000:]
  return lines[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  prepare.prepare("synthetic_motion", data_dir, config="tiny", log=lambda *a: None)
  return data_dir


def test_config_mistakes_are_one_line_and_create_no_workdir(tmp_path):
  workdir = tmp_path / "w"
  cases = {
      ("--config.bogus=1",): "error: --config.bogus: the config has no field 'bogus'",
      ("--config.model.kpsem.nope=2",): "error: --config.model.kpsem.nope: the config has "
                                        "no field 'nope'",
      ("--config=configs/nope.py",): "error: --config=configs/nope.py: no such readable "
                                     "config file",
      ("--config.optimizer.lr=fast",): "error: flag --config.optimizer.lr=fast: could not "
                                       "convert string to float",
      ("--config.dataset.name=nosuch",): "error: config.dataset.name='nosuch' is not a "
                                         "dataset this project builds; choose one of hmdb51,",
      ("--config=configs/synthetic_c2d.py:c2d_kpsem,h=2",): (
          "error: flag --config=configs/synthetic_c2d.py:c2d_kpsem,h=2: Error whilst parsing config "
          "file: ValueError: configs/synthetic_c2d.py: unknown option(s) ['h']"),
  }
  for args, message in cases.items():
    line = one_error_line(run_train(*args, f"--workdir={workdir}"))
    assert line.startswith(message), line
    assert not workdir.exists(), args


def test_a_missing_init_from_is_one_line_naming_the_convert_command(tmp_path, tiny_data):
  workdir = tmp_path / "w"
  missing = tmp_path / "checkpoints" / "mf_kpsem_init"
  line = one_error_line(run_train(
      "--config=configs/synthetic.py:tiny", f"--config.dataset.data_dir={tiny_data}",
      f"--config.init_from={missing}", f"--workdir={workdir}"))
  assert line == (
      f"error: config.init_from={missing} does not exist: create it from the released MFNet "
      f"with: python -m kpsem_jax.convert --pytorch=MFNet3D_Kinetics-400_72.8.pth "
      f"--output={missing} --model=mf_kpsem --num_classes=8 (docs/inference.md), or train "
      "from scratch with --config.init_from=")
  assert not workdir.exists()  # checked before the workdir is made


@pytest.mark.slow
def test_a_second_run_on_a_workdir_stops_at_once_and_a_dead_holder_is_taken_over(
    tmp_path, tiny_data):
  workdir = tmp_path / "w"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom kpsem_jax.workdir_lock import WorkdirLock\n"
       f"WorkdirLock({str(workdir)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    line = one_error_line(run_train("--config=configs/synthetic.py:tiny",
                                    f"--config.dataset.data_dir={tiny_data}",
                                    f"--workdir={workdir}"))
    assert time.monotonic() - start < 120  # at once, not after an orbax timeout
    assert line.startswith(f"error: {workdir} is in use by pid {holder.pid} on host "), line
    assert not os.path.exists(workdir / "checkpoints")
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  said = []
  lock = WorkdirLock(str(workdir), log=said.append)
  with lock:  # the dead holder's lock is free; its note says whose it was
    assert said and said[0].startswith(f"taking over the lock of a run that is gone (pid "
                                       f"{holder.pid} on host ")
    with pytest.raises(WorkdirInUseError, match="is in use by pid"):
      WorkdirLock(str(workdir)).acquire()  # a second holder, even in this process
  assert open(workdir / "lock").read() == ""  # released on a clean finish


def _flip_bytes(path, where):
  data = bytearray(open(path, "rb").read())
  i = int(len(data) * where)
  data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
  open(path, "wb").write(bytes(data))


def _data_files(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "variables", "**", "*"), recursive=True)
           if os.path.isfile(p) and "/d/" in p]
  assert files, step_dir
  return files


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_a_corrupt_converted_checkpoint_never_loads(tmp_path, where):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  variables, metadata = checkpoint.load_variables(str(tmp_path / "ckpt"))
  assert metadata["sha256"]["variables"] == checkpoint.digest(variables)
  for path in _data_files(str(tmp_path / "ckpt" / "checkpoints" / "0")):
    _flip_bytes(path, where)
  said = []
  with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint in "):
    checkpoint.load_variables(str(tmp_path / "ckpt"), log=said.append)
  assert said and said[0].startswith("skipping checkpoint step 0: ")


def test_the_checksum_catches_changed_values_that_still_decode():
  tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  metadata = {"sha256": {"variables": checkpoint.digest(tree)}}
  checkpoint.verify("variables", tree, metadata, "/x/7")
  tree["params"]["w"][1, 2] = 3e38
  with pytest.raises(checkpoint.CheckpointError, match="/x/7/variables is corrupt: its SHA-256"):
    checkpoint.verify("variables", tree, metadata, "/x/7")


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_clear_error(tmp_path, tiny_data, monkeypatch):
  config = trainer.load_config("synthetic", "tiny")
  config.num_train_steps = config.eval_every = 3
  config.dataset.data_dir = tiny_data
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  original = ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if str(self.directory).endswith("checkpoints"):
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert str(error.value).startswith(
      f"writing the checkpoint of step 3 to {tmp_path / 'w' / 'checkpoints'} failed: No space "
      "left on device; free space")
  assert not [d for d in os.listdir(tmp_path / "w" / "checkpoints") if d.isdigit()]


def test_a_broken_metadata_file_is_named(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "checkpoints" / "0" / "metadata" / "metadata"
  assert path.is_file()
  path.write_text('{"model": {"backbone": ')  # cut mid-write
  said = []
  with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint in "):
    checkpoint.load_variables(str(tmp_path / "ckpt"), log=said.append)
  assert said[0].startswith(f"skipping checkpoint step 0: {path} cannot be read (")
