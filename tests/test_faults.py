"""Hostile inputs and faults: one clear line each, nothing silent, nothing lost."""

import glob
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from kpsem_jax.config_base import load_config
from kpsem_jax.data import prepare
from kpsem_jax.testing import tiny_models
from kpsem_jax.train import checkpoint, trainer
from kpsem_jax.workdir_lock import WorkdirInUseError, WorkdirLock

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
      ("--config.num_steps=5",): "error: --config.num_steps: the config has no field "
                                 "'num_steps'; did you mean 'num_train_steps'? (--config_help",
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
  # Bad values: every one named, one line each, in one run (the check sees the whole config).
  values = {"batch_size=0": "config.batch_size=0: must be an integer, at least 1",
            "eval_batch_size=0": "config.eval_batch_size=0: must be an integer, at least 1",
            "clip.eval_clips=0": "config.clip.eval_clips=0: must be an integer, at least 1",
            "optimizer.lr=nan": "config.optimizer.lr=nan: must be a finite number, at least 0.0",
            "optimizer.clip_grad_norm=inf": "config.optimizer.clip_grad_norm=inf: must be a "
                                            "finite number, at least 0.0",
            "optimizer.kpsem_clip_grad_norm=-1": "config.optimizer.kpsem_clip_grad_norm=-1.0: "
                                                 "must be a finite number, at least 0.0",
            "seed=-1": "config.seed=-1: must be an integer, at least 0",
            "num_train_steps=0": "config.num_train_steps=0: must be an integer, at least 1",
            "model.conv_strategy=bogus": "config.model.conv_strategy='bogus': choose one of"}
  result = run_train(*(f"--config.{v}" for v in values), f"--workdir={workdir}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == len(values), result.stderr
  for message in values.values():
    assert sum(l.startswith(f"error: {message}") for l in lines) == 1, (message, lines)
  assert not workdir.exists()


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
  assert "\n" not in said[0] and "tensorstore_spec" not in said[0] and len(said[0]) < 700


def test_a_tensorstore_failure_is_one_short_line_without_its_spec_dump():
  spec = "{'driver': 'zarr', 'kvstore': {'driver': 'ocdbt', " + "'x': 1, " * 120 + "}}"
  inner = ValueError(f'DATA_LOSS: Error reading "params.w/0.0" in OCDBT database at local '
                     f'file "/w/checkpoints/3/variables/": Unknown frame descriptor '
                     f"[tensorstore_spec={spec!r}] See full TensorStore details: x")
  try:
    try:
      raise inner
    except ValueError as e:
      raise RuntimeError("orbax restore failed") from e
  except RuntimeError as outer:
    reason = checkpoint.failure_reason(outer)
  assert reason == ('DATA_LOSS: Error reading "params.w/0.0" in OCDBT database at local file '
                    '"/w/checkpoints/3/variables/": Unknown frame descriptor')
  os_error = ValueError("NOT_FOUND: Error writing local file \"/w/c/3/x\": "
                        "[os_error_code='28'] [tensorstore_spec='{}']")
  assert checkpoint.failure_reason(os_error) == "No space left on device: /w/c/3/x"


def test_the_checksum_catches_changed_values_that_still_decode():
  tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  metadata = {"sha256": {"variables": checkpoint.digest(tree)}}
  checkpoint.verify("variables", tree, metadata, "/x/7")
  tree["params"]["w"][1, 2] = 3e38
  with pytest.raises(checkpoint.CheckpointError, match="/x/7/variables is corrupt: its SHA-256"):
    checkpoint.verify("variables", tree, metadata, "/x/7")


@pytest.mark.slow
def test_a_failed_asynchronous_save_ends_the_run_and_keeps_the_previous_step(
    tmp_path, tiny_data, monkeypatch):
  """orbax reports a full disk from its background write as a ValueError (TensorStore's
  RESOURCE_EXHAUSTED), not an OSError: the save does not count, the run ends."""
  config = load_config("synthetic", "tiny")
  config.num_train_steps = config.eval_every = 6
  config.dataset.data_dir = tiny_data
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  original = ocp.CheckpointManager.wait_until_finished

  failed = []

  def full(self):
    original(self)
    if str(self.directory).endswith("checkpoints") and 6 in self.all_steps() and not failed:
      failed.append(6)
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": No space left on '
                       "device [os_error_code='28']")

  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", full)
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert str(error.value).startswith(
      f"writing the checkpoint of step 6 to {tmp_path / 'w' / 'checkpoints'} failed: "
      "No space left on device: x (")
  assert str(error.value).endswith("then rerun the same command: it resumes from step 3")


def test_a_broken_metadata_file_is_named(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "checkpoints" / "0" / "metadata" / "metadata"
  assert path.is_file()
  path.write_text('{"model": {"backbone": ')  # cut mid-write
  said = []
  with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint in "):
    checkpoint.load_variables(str(tmp_path / "ckpt"), log=said.append)
  assert said[0].startswith(f"skipping checkpoint step 0: {path} cannot be read (")


# ---- round two: full disks, preemption, damaged checkpoints and shards, small wrongs -------
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "videos")
TINY = ("--config=configs/synthetic.py:tiny",)


def _can_mount_tmpfs():
  done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                        capture_output=True, timeout=60) if shutil.which("unshare") else None
  return done is not None and done.returncode == 0


def on_small_disk(size, script, tmp_path):
  """Runs the bash ``script`` where ``$DISK`` is a fresh ``size`` tmpfs (a user and mount
  namespace of its own: no root needed where unprivileged namespaces are allowed)."""
  if not _can_mount_tmpfs():
    pytest.skip("cannot mount a small tmpfs here (unshare -rm not permitted)")
  disk = tmp_path / "disk"
  disk.mkdir()
  wrapper = (f"mount -t tmpfs -o size={size} tmpfs {disk} && export DISK={disk} && "
             f"{script}; status=$?; ls -A {disk}/w/checkpoints > {tmp_path}/steps.txt "
             f"2>/dev/null; exit $status")
  done = subprocess.run(["unshare", "-rm", "bash", "-c", wrapper], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  steps = (tmp_path / "steps.txt").read_text().split() if (tmp_path / "steps.txt").exists() else []
  return done, steps


@pytest.mark.slow
@pytest.mark.parametrize("size,patch,message,kept", [
    # The free-space check: step 3 fits, step 6 does not.
    ("900k", "", "writing the checkpoint of step 6 to {w}/checkpoints failed: not enough "
     "free space (it needs about ", ["3"]),
    # The check passes (made blind here), the write itself runs out of space.
    ("300k", "kpsem_jax.train.training_checkpoints._agreed_free_space = lambda directory: None",
     "writing the checkpoint of step 3 to {w}/checkpoints failed: No space left on device", []),
])
def test_a_full_disk_is_one_line_and_the_last_good_step_stays(tmp_path, tiny_data, size,
                                                              patch, message, kept):
  args = [*TINY, f"--config.dataset.data_dir={tiny_data}", "--workdir=$DISK/w",
          "--config.num_train_steps=9", "--config.eval_every=100"]
  program = ("import runpy, sys, kpsem_jax.train.training_checkpoints\n" + patch + "\n"
             "sys.argv = ['train.py'] + sys.argv[1:]\nrunpy.run_path('train.py', run_name='__main__')")
  done, steps = on_small_disk(size, f"{sys.executable} -c {shlex.quote(program)} "
                              + " ".join(args), tmp_path)
  line = one_error_line(done)
  assert line.startswith("error: " + message.format(w=tmp_path / "disk" / "w")), line
  resume = f"it resumes from step {kept[-1]}" if kept else "it starts again from step 0"
  assert line.endswith(resume), line
  others = "\n".join(l for l in done.stderr.splitlines() if not l.startswith("error: "))
  assert "Event loop is closed" not in others and "orbax" not in others, others[-3000:]
  assert len(others.splitlines()) < 40, others[-3000:]
  # No partial step counts (orbax's temporary folder of a write cut short by TensorStore's
  # own threads may stay: the next run's orbax removes it).
  assert [s for s in steps if s.isdigit()] == kept


def _wait_for_rows(workdir, rows, process, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise AssertionError(process.communicate()[1][-3000:])
    if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
      return
    time.sleep(0.2)
  raise AssertionError(f"{path} never reached {rows} rows")


def _final_digest(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "inputs", "process_0.jsonl"))]
  return rows[-1]["params_sha256"], [r["video_index"] for r in rows if "video_index" in r]


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_the_step_and_the_resumed_run_equals_an_uninterrupted_one(
    tmp_path, tiny_data):
  args = [*TINY, f"--config.dataset.data_dir={tiny_data}", "--config.num_train_steps=10",
          "--config.checkpoint_every=100", "--config.eval_every=5", "--config.num_workers=2",
          "--config.record_inputs=True"]
  straight = tmp_path / "straight"
  done = run_train(*args, f"--workdir={straight}")
  assert done.returncode == 0 and "leaked" not in done.stderr, done.stderr[-3000:]
  for signum, rows in ((signal.SIGTERM, 3), (signal.SIGINT, 6)):
    workdir = tmp_path / signum.name
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, f"--workdir={workdir}"], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    _wait_for_rows(str(workdir), rows, process)
    # SIGTERM to the main process, as a scheduler sends it; Ctrl-C to the whole group
    # (the worker processes too), as a terminal sends it.
    if signum == signal.SIGTERM:
      process.send_signal(signum)
    else:
      os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    (line,) = [l for l in err.splitlines() if l.startswith("interrupted at step")]
    step = int(line.split()[3].rstrip(";"))
    assert line == f"interrupted at step {step}; saved; rerun the same command to resume"
    assert 1 <= step < 10 and os.listdir(workdir / "checkpoints") == [str(step)]
    if signum == signal.SIGINT:
      continue  # the saved step resumes alike whatever the signal (CI time)
    again = run_train(*args, f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {step}" in again.stdout
    assert _final_digest(workdir) == _final_digest(straight)  # the same batches and weights


def _state(pid):
  """``pid``'s state letter from /proc (``Z``: exited, not yet reaped), or None if gone."""
  try:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
  except OSError:
    return None


def _children(pid):
  """Live processes whose parent is ``pid``."""
  found = []
  for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
      fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if fields[1] == str(pid) and fields[0] != "Z":
      found.append(int(entry))
  return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_processes_end_when_the_main_process_is_killed(tmp_path, tiny_data):
  process = subprocess.Popen(
      [sys.executable, "train.py", *TINY, f"--config.dataset.data_dir={tiny_data}",
       "--config.num_train_steps=100000", "--config.eval_every=100000",
       "--config.num_workers=2", f"--workdir={tmp_path / 'w'}"], cwd=REPO, text=True,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    _wait_for_rows(str(tmp_path / "w"), 1, process)  # training, so the workers run
    workers = _children(process.pid)
    assert len(workers) >= 2, workers  # two loader workers (and the resource tracker)
  finally:
    process.kill()  # SIGKILL: nothing of the main process runs any more
    process.wait()
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline and any(_state(w) not in (None, "Z") for w in workers):
    time.sleep(0.2)
  alive = [w for w in workers if _state(w) not in (None, "Z")]
  assert alive == [], f"processes {alive} outlived their killed main process"


@pytest.fixture(scope="module")
def damaged_workdir(tmp_path_factory, tiny_data):
  """A 6-step run (checkpoints 3 and 6, best 6) whose step 6 data files are cut short."""
  workdir = tmp_path_factory.mktemp("damaged") / "w"
  config = load_config("synthetic", "tiny")
  config.dataset.data_dir = tiny_data
  config.num_train_steps = config.eval_every = 6
  trainer.train_and_evaluate(config, str(workdir))
  for kind in ("checkpoints", "best"):
    for path in glob.glob(str(workdir / kind / "6" / "*" / "**" / "d" / "*"), recursive=True):
      os.truncate(path, 100)
  return workdir


def _quiet(stderr):
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
  assert "orbax" not in stderr and "could not be restored" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_naming_its_file_in_predict_and_resume(
    damaged_workdir, tmp_path, tiny_data):
  video = os.path.join(FIXTURES, "ucf101_style_ApplyEyeMakeup.avi")
  if not os.path.exists(video):
    pytest.skip(f"{video} not found (../shared beside the repo)")
  out = subprocess.run([sys.executable, "-m", "kpsem_jax.predict",
                        f"--checkpoint={damaged_workdir}", video], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  _quiet(out.stderr)
  skipped = [l for l in out.stderr.splitlines() if l.startswith("skipping checkpoint step 6")]
  assert [l.split(": ")[1].split(" ")[0] for l in skipped] == [
      str(damaged_workdir / "best" / "6"), str(damaged_workdir / "checkpoints" / "6")]
  for l, kind in zip(skipped, ("best", "checkpoints")):  # the reason names the file
    assert f'local file "{damaged_workdir / kind / "6" / "variables"}/' in l, l
  assert f"using {damaged_workdir / 'checkpoints' / '3'} instead" in out.stderr
  # visualize falls back alike, as quietly.
  pictures = tmp_path / "pictures"
  out = subprocess.run([sys.executable, "-m", "kpsem_jax.visualize",
                        f"--checkpoint={damaged_workdir}", f"--out={pictures}", "--size=32",
                        video], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  _quiet(out.stderr)
  assert [l.split(": ")[1].split(" ")[0] for l in out.stderr.splitlines()
          if l.startswith("skipping checkpoint step 6")] == [
              str(damaged_workdir / "best" / "6"), str(damaged_workdir / "checkpoints" / "6")]
  assert os.path.exists(pictures / "summary.json")
  # Resuming moves both damaged steps aside, says so once each, and trains on from step 3.
  workdir = tmp_path / "copy"
  shutil.copytree(damaged_workdir, workdir)
  out = run_train(*TINY, f"--config.dataset.data_dir={tiny_data}", "--config.num_train_steps=6",
                  "--config.eval_every=6", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  _quiet(out.stderr)
  assert "resuming from step 3" in out.stdout
  assert sorted(n.rsplit("_", 1)[0] for n in os.listdir(workdir / "damaged")) == [
      "best_6", "checkpoint_6"]  # the damaged best/ is kept aside too, not deleted
  assert sorted(os.listdir(workdir / "best")) == ["6"]


@pytest.mark.slow
def test_fewer_steps_than_the_checkpoint_evaluates_the_checkpoint_as_what_it_is(
    tmp_path, tiny_data):
  workdir = tmp_path / "w"
  config = load_config("synthetic", "tiny")
  config.dataset.data_dir = tiny_data
  config.num_train_steps = config.eval_every = 3
  trainer.train_and_evaluate(config, str(workdir))
  config.num_train_steps = 1
  trainer.train_and_evaluate(config, str(workdir))
  assert sorted(f for f in os.listdir(workdir) if f.endswith(".json") and "eval" in f) == [
      "eval_test_step3.json"]
  finals = [json.loads(l) for l in open(workdir / "metrics.jsonl") if "final/" in l]
  assert [r["step"] for r in finals] == [3]  # replaced, and about step 3


def test_a_damaged_frame_shard_is_one_line_naming_it(tmp_path, tiny_data):
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_data, data_dir)
  shards = glob.glob(str(data_dir / "synthetic_motion" / "tiny" / "*" / "frames" / "train-*"))
  for shard in shards:  # a frame file per group of videos: damage every one
    _flip_bytes(shard, 0.5)
  out = run_train(*TINY, f"--config.dataset.data_dir={data_dir}", f"--workdir={tmp_path / 'w'}",
                  "--config.num_workers=2")
  line = one_error_line(out)
  named = line[len("error: "):].split(": cannot read frames ")[0]
  assert named in shards and ": cannot read frames " in line, line
  assert line.endswith("rebuild the dataset with python -m kpsem_jax.prepare")


def test_two_prepares_on_one_folder_the_second_stops_at_once(tmp_path):
  folder = tmp_path / "tfds" / "synthetic_motion" / "tiny"
  folder.mkdir(parents=True)
  with WorkdirLock(str(folder), name=".prepare.lock"):
    out = subprocess.run([sys.executable, "-m", "kpsem_jax.prepare", "synthetic_motion",
                          "--config=tiny", f"--data_dir={tmp_path / 'tfds'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  line = one_error_line(out)
  assert line.startswith(f"error: another prepare is building synthetic_motion (tiny): "
                         f"{folder} is in use by pid {os.getpid()}"), line
  assert line.endswith("or use another --data_dir")
  assert os.listdir(folder) == [".prepare.lock"]


@pytest.mark.slow
def test_prepare_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
  done, _ = on_small_disk("300k", f"{sys.executable} -m kpsem_jax.prepare synthetic_motion "
                          "--config=tiny --data_dir=$DISK/tfds; status=$?; "
                          f"find $DISK/tfds -name '*.array_record' > {tmp_path}/left.txt; "
                          "exit $status", tmp_path)
  line = one_error_line(done)
  assert line.startswith(f"error: building synthetic_motion (tiny) in "
                         f"{tmp_path / 'disk' / 'tfds' / 'synthetic_motion' / 'tiny'} failed: "), line
  assert "No space left on device" in line and line.endswith("the build starts again")
  assert (tmp_path / "left.txt").read_text() == ""  # no half-written shard


def test_the_exported_artifact_follows_the_umask(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  out = subprocess.run(["bash", "-c", f"umask 022 && {sys.executable} -m kpsem_jax.export "
                        f"--checkpoint={tmp_path / 'ckpt'} --output={tmp_path / 'model.jax'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert stat.S_IMODE(os.stat(tmp_path / "model.jax").st_mode) == 0o644


def test_an_init_from_that_is_not_a_checkpoint_is_one_error_before_the_workdir(tmp_path,
                                                                                tiny_data):
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  empty, text = tmp_path / "empty", tmp_path / "weights.pth"
  empty.mkdir()
  text.write_text("not a checkpoint")
  for path in (empty, text):
    config = load_config("synthetic", "tiny")
    config.dataset.data_dir = tiny_data
    config.init_from = str(path)
    with pytest.raises(trainer.TrainingError) as error:
      trainer.train_and_evaluate(config, str(tmp_path / "w"))
    assert str(error.value).startswith(f"config.init_from={path} is not a kpsem-jax checkpoint")
    assert not (tmp_path / "w").exists()


def test_a_checkpoint_of_other_optimizer_settings_is_refused_not_thrown_away(tmp_path, tiny_data,
                                                                            capsys):
  """A run checkpointed with another optimizer state's shape (here: before the KPSEM branch
  clip and the split MLPs' Adam, 2026-12-03) is not damaged: resuming with today's defaults
  stops with one line naming the fields, keeps every step, and resumes with the old values."""
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "w")

  def config(**optimizer):
    c = load_config("synthetic", "tiny")
    c.dataset.data_dir = tiny_data
    c.num_train_steps = c.eval_every = 3
    c.optimizer.update(optimizer)
    return c

  old = dict(kpsem_clip_grad_norm=0.0, split_mlp_adam_lr=0.0)
  trainer.train_and_evaluate(config(**old), workdir)
  again = config()
  again.num_train_steps = 6
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(again, workdir)
  assert str(error.value) == (
      f"{workdir}/checkpoints/3 was written with other optimizer settings, whose state it "
      "holds (optimizer.kpsem_clip_grad_norm: checkpoint 0.0, config 1.0; "
      "optimizer.split_mlp_adam_lr: checkpoint 0.0, config 0.003): resume with the "
      "checkpoint's values (e.g. --config.optimizer.kpsem_clip_grad_norm=...), or use a new "
      "--workdir")
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]
  assert not os.path.exists(os.path.join(workdir, "damaged"))
  resumed = config(**old)
  resumed.num_train_steps = 6
  capsys.readouterr()
  trainer.train_and_evaluate(resumed, workdir)
  assert "resuming from step 3" in capsys.readouterr().out


def test_a_full_disk_at_the_start_of_a_run_is_one_line(tmp_path, tiny_data, monkeypatch,
                                                       capsys):
  import errno  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  config = tiny_models.train_config(tiny_data, steps=2)
  workdir = str(tmp_path / "w")

  def full(fd, data, offset):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "pwrite", full)  # the lock file's first write
  with pytest.raises(SystemExit) as stop:
    with cli.one_line_errors(trainer.TrainingError, doing=f"training in {workdir}"):
      trainer.train_and_evaluate(config, workdir)
  assert stop.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err == (f"error: training in {workdir}: {os.path.join(os.path.abspath(workdir), 'lock')}: "
                 "No space left on device; free space there, then rerun the same command")
  # an OSError the layer does not know stays an exception (a bug to see, not to hide)
  with pytest.raises(OSError):
    with cli.one_line_errors(doing="x"):
      raise OSError(errno.EBADF, "Bad file descriptor")


def test_a_damaged_dataset_index_names_the_file_and_the_command_that_rebuilds_it(
    tmp_path, tiny_data):
  from kpsem_jax.data import video_source  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tiny_data, data_dir)
  root = video_source.dataset_dir(data_dir, "synthetic_motion", "tiny")
  shard = glob.glob(os.path.join(root, "*-train.array_record*"))[0]
  open(shard, "wb").close()  # zero bytes
  with pytest.raises(video_source.DataNotPreparedError) as error:
    video_source.load_source(data_dir, "synthetic_motion", "tiny", "train")
  message = str(error.value)
  expected = f"the synthetic_motion dataset (tiny) in {root} is damaged: {shard}: "
  assert message.startswith(expected), message
  assert message[len(expected):].startswith(("cannot be read (", "holds 0 records where the "
                                             "build wrote 32")), message
  assert message.endswith(f"remove {root} and rebuild it with:\n  python -m kpsem_jax.prepare "
                          f"synthetic_motion --data_dir={data_dir} --config=tiny")
  with open(os.path.join(root, "dataset_info.json"), "w") as f:
    f.write("{ not json")
  with pytest.raises(video_source.DataNotPreparedError,
                     match=r"is damaged: .*dataset_info.json: cannot be read \("):
    video_source.load_source(data_dir, "synthetic_motion", "tiny", "test")


def test_metadata_that_was_changed_or_does_not_fit_the_model_is_refused_as_damage(tmp_path):
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  path = str(tmp_path / "ckpt" / "checkpoints" / "0" / "metadata" / "metadata")
  original = json.load(open(path))
  assert set(original["sha256"]) == {"variables", "metadata"}
  variables, metadata = checkpoint.load_variables(str(tmp_path / "ckpt"))
  assert metadata["class_names"] == original["class_names"]

  def load_with(metadata):
    with open(path, "w") as f:
      json.dump(metadata, f)
    logged = []
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
      checkpoint.load_variables(str(tmp_path / "ckpt"), log=logged.append)
    return " ".join(logged)
  # valid JSON, edited: the metadata's own checksum catches it
  edited = dict(original, class_names=original["class_names"][:3])
  assert f"{path} does not match its SHA-256 (changed after it was written)" in load_with(edited)
  # a checkpoint from before the metadata had a checksum: its fields are still checked
  old = dict(edited, sha256={"variables": original["sha256"]["variables"]})
  assert f"{path} names 3 classes for a classifier of 6" in load_with(old)
  no_model = {k: v for k, v in old.items() if k != "model"}
  assert f"{path} has no model description (model.backbone)" in load_with(no_model)
  open(path, "w").close()
  logged = []
  with pytest.raises(checkpoint.CheckpointError):
    checkpoint.load_variables(str(tmp_path / "ckpt"), log=logged.append)
  assert logged == [f"skipping checkpoint step 0: {path} is empty (0 bytes)"]
