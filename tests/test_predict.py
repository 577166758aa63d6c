"""``python -m kpsem_jax.predict``: the evaluation views, batched, one compilation, errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import video
from kpsem_jax.inference.predictor import has_bf16_units, load_predictor
from kpsem_jax.models.classifier import normalize
from kpsem_jax.testing import reference_clips
from kpsem_jax.testing import tiny_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "videos")
VIDEOS = ["kinetics400_arm_wrestling.mp4", "kinetics_style_flipping_pancake.mkv",
          "ucf101_style_BabyCrawling.avi"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  for name in VIDEOS:
    if not os.path.exists(os.path.join(FIXTURES, name)):
      pytest.skip(f"{name} not found in {FIXTURES} (../shared beside the repo)")
  root = tmp_path_factory.mktemp("predict")
  model, variables = tiny_models.save_tiny_checkpoint(root / "ckpt")
  folder = root / "videos"
  folder.mkdir()
  for name in VIDEOS[:2]:
    shutil.copy(os.path.join(FIXTURES, name), folder / name)
  (folder / "notes.txt").write_text("not a video")  # not a video extension: not picked up
  (folder / "broken.mp4").write_bytes(b"\x00" * 1000)
  return dict(root=root, ckpt=str(root / "ckpt"), folder=str(folder), model=model,
              variables=variables)


def reference_probabilities(model, variables, path):
  """Loop over views one at a time: the eval protocol, decoded here independently."""
  c = tiny_models.CLIP
  spec = clips_lib.ClipSpec(frames=c["frames"], interval=c["interval"], crop=c["crop"],
                                 eval_resize=c["eval_resize"], num_clips=c["eval_clips"],
                                 num_crops=c["eval_crops"])
  frames = video.read_video(path, short_side=spec.eval_resize)
  probs = []
  for v in range(spec.num_clips * spec.num_crops):
    clip = reference_clips.eval_view(frames, v, spec)[None]
    probs.append(jax.nn.softmax(model.apply(variables, normalize(clip)))[0])
  return np.mean(probs, axis=0), len(probs)


def test_cli_json_matches_view_by_view_reference_and_reports_bad_files(tiny):
  out = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}", "--json",
       "--top_k=3", "--batch_size=4", tiny["folder"], os.path.join(FIXTURES, VIDEOS[2])],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr  # one file failed, the others were classified
  results = json.loads(out.stdout)
  names = [os.path.basename(r["video"]) for r in results]
  assert names == ["broken.mp4", VIDEOS[0], VIDEOS[1], VIDEOS[2]]
  assert results[0]["error"].startswith("cannot open as a video") and "top" not in results[0]
  for r in results[1:]:
    probs, views = reference_probabilities(tiny["model"], tiny["variables"], r["video"])
    assert r["views"] == views == 6  # 2 clips x 3 crops, from the checkpoint's config
    order = np.argsort(-probs)[:3]
    assert [t["label"] for t in r["top"]] == [tiny_models.CLASSES[i] for i in order]
    np.testing.assert_allclose([t["probability"] for t in r["top"]], probs[order], rtol=1e-5)
  assert "3 of 4 videos classified: 18 clips through the model" in out.stderr
  assert "clips/s" in out.stderr and "failed: " in out.stderr


def test_text_output_and_errors(tiny):
  out = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}", "--top_k=2",
       "--num_clips=1", "--num_crops=1", os.path.join(FIXTURES, VIDEOS[0])],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0].endswith(VIDEOS[0] + ":") and len(lines) == 3
  assert all(l.split()[1] in tiny_models.CLASSES for l in lines[1:])
  missing = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['root']}/nothing", "x.mp4"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert missing.returncode == 1 and "nothing is not a folder" in missing.stderr
  unnamed = subprocess.run([sys.executable, "-m", "kpsem_jax.predict", "x.mp4"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert unnamed.returncode == 1 and unnamed.stderr.strip() == (
      "error: flag --checkpoint=None: Flag --checkpoint must have a value other than None.")
  assert "Traceback" not in missing.stderr


def test_views_are_batched_through_one_compilation(tiny):
  predictor = load_predictor(tiny["ckpt"])
  spec = predictor.with_spec(num_clips=3, num_crops=1)  # 3 views: batches of 2, one padded
  for name in VIDEOS:
    views = predictor.views(os.path.join(FIXTURES, name), spec)
    probs = predictor.probabilities(views, batch_size=2)
    assert views.shape == (3, 8, 32, 32, 3) and views.dtype == np.uint8
    direct = jax.nn.softmax(predictor.logits(normalize(views)), axis=-1).mean(0)
    np.testing.assert_allclose(probs, direct, rtol=1e-5, atol=1e-7)
  assert predictor._forward._cache_size() == 1  # pylint: disable=protected-access


def test_timeline_windows_cover_the_video_and_equal_the_direct_clip(tiny):
  """``--timeline``: a window per stride across the whole video, each the clip it names."""
  path = os.path.join(FIXTURES, "ucf101_style_BabyCrawling.avi")  # 127 frames at 25 fps
  out = subprocess.run([sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}",
                        "--json", "--top_k=2", "--timeline", "--timeline_stride=0.8", path],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  (result,) = json.loads(out.stdout)
  spec = load_predictor(tiny["ckpt"]).clip_spec
  span, stride = spec.frames * spec.interval, 20  # 16 frames; 0.8 s at 25 fps
  # 0.8 s between 0.64 s windows: the 0.16 s after each is never looked at, and it says so
  assert ("windows are 0.64 s long and start 0.8 s apart: 0.16 s after each window is "
          "never looked at") in out.stderr
  frames = video.read_video(path, short_side=spec.eval_resize)
  assert len(frames) == 127
  starts = list(range(0, len(frames) - span + 1, stride))
  timeline = result["timeline"]
  assert [w["start"] for w in timeline] == pytest.approx([s / 25 for s in starts])
  assert [w["end"] for w in timeline] == pytest.approx([(s + span) / 25 for s in starts])
  assert all(len(w["top"]) == 2 and set(w["top"][0]) == {"label", "probability"}
             for w in timeline)
  # The last window's probabilities equal the model on that clip, decoded whole.
  h, w = frames.shape[1:3]
  top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
  clip = frames[starts[-1] + spec.interval * np.arange(spec.frames),
                top:top + spec.crop, left:left + spec.crop]
  probs = jax.nn.softmax(tiny["model"].apply(tiny["variables"], normalize(clip[None])))[0]
  names = tiny_models.CLASSES
  for entry in timeline[-1]["top"]:
    np.testing.assert_allclose(entry["probability"], probs[names.index(entry["label"])],
                               rtol=1e-4)
  # Text output: one line per window.
  text = subprocess.run([sys.executable, "-m", "kpsem_jax.predict",
                         f"--checkpoint={tiny['ckpt']}", "--timeline", path], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert text.returncode == 0, text.stderr[-2000:]
  lines = text.stdout.split("timeline (seconds, top label):\n")[1].splitlines()
  # the default stride is one window: every frame is in a window, no gap, no note
  assert len(lines) == len(list(range(0, 127 - span + 1, span)))
  assert lines[0].split()[0] == f"0.00-{span / 25:.2f}"
  assert lines[1].split()[0] == f"{span / 25:.2f}-{2 * span / 25:.2f}"
  assert "never looked at" not in text.stderr
  bad = subprocess.run([sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}",
                        "--timeline", "--timeline_stride=nan", path], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and bad.stderr.strip() == (
      "error: --timeline_stride=nan: must be a finite number of seconds, 0 or more (0: one "
      "window)")


def test_a_truncated_video_is_reported_unless_allowed(tiny, tmp_path):
  cut = tmp_path / "cut.avi"
  cut.write_bytes(open(os.path.join(FIXTURES, VIDEOS[2]), "rb").read()[:20000])
  base = [sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}"]
  out = subprocess.run(base + ["--json", str(cut)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  (result,) = json.loads(out.stdout)
  assert "top" not in result and result["error"].startswith(f"{cut}: decoded 1 of ~"), result
  assert result["error"].endswith("(truncated or damaged file); --allow_truncated classifies "
                                  "the frames that decode")
  text = subprocess.run(base + [str(cut)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert f"{cut}: FAILED: {cut}: decoded 1 of ~" in text.stdout and text.returncode == 1
  allowed = subprocess.run(base + ["--json", "--allow_truncated", str(cut)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert allowed.returncode == 0, allowed.stderr[-2000:]
  (result,) = json.loads(allowed.stdout)
  assert len(result["top"]) == 5 and result["views"] == 6


def test_a_checkpoint_with_non_finite_parameters_is_refused_in_one_line(tmp_path, tiny):
  """predict (and every loader of checkpoints: export, visualize, --mode=eval)
  refuses non-finite parameters instead of serving NaN probabilities."""
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  variables, metadata = checkpoint.load_variables(tiny["ckpt"])
  kernel = np.array(variables["params"]["classifier"]["kernel"])
  kernel[0, 0] = np.nan
  params = dict(variables["params"], classifier=dict(variables["params"]["classifier"],
                                                     kernel=kernel))
  checkpoint.save_variables(str(tmp_path / "bad"), dict(variables, params=params), metadata)
  with pytest.raises(checkpoint.CheckpointError, match="non-finite values in 1 tensor"):
    load_predictor(str(tmp_path / "bad"))
  run = subprocess.run([sys.executable, "-m", "kpsem_jax.predict",
                        f"--checkpoint={tmp_path / 'bad'}", os.path.join(FIXTURES, VIDEOS[0])],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1 and "Traceback" not in run.stderr
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "params/classifier/kernel" in errors[0], run.stderr[-2000:]


@pytest.mark.parametrize("flag", ["--top_k=0", "--num_clips=-1"])
def test_counts_below_one_are_one_error_line(tiny, flag):
  run = subprocess.run([sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}",
                        flag, os.path.join(FIXTURES, VIDEOS[0])], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 1 and run.stderr.strip() == f"error: {flag}: must be at least 1"


def test_inputs_are_checked_before_compiling_and_a_failed_file_is_named_once(tiny, tmp_path):
  from kpsem_jax import predict  # pylint: disable=import-outside-toplevel
  missing, fifo = str(tmp_path / "gone.avi"), str(tmp_path / "pipe.avi")
  os.mkfifo(fifo)
  logged = []
  results = predict.run(tiny["ckpt"], [missing, fifo], log=logged.append)
  assert [r["error"] for r in results] == [
      "cannot be read (No such file or directory)",
      "not a regular file (a folder, FIFO or device): skipped"]
  # nothing was compiled (or loaded) for inputs none of which is a file
  assert logged == ["none of the 2 inputs is a readable file; nothing was classified"]
  broken = str(tmp_path / "broken.avi")
  open(broken, "wb").write(b"not a video")
  results = predict.run(tiny["ckpt"], [broken, missing, os.path.join(FIXTURES, VIDEOS[0])],
                        num_clips=1, num_crops=1, log=logged.append)
  text = predict.format_text(results).splitlines()
  assert [line.count(broken) for line in text if "FAILED" in line and "broken" in line] == [1]
  assert f"{missing}: FAILED: cannot be read (No such file or directory)" in text
  assert "top" in results[2] and any("compiled in" in line for line in logged)


def test_a_name_that_is_not_utf8_is_printed_escaped_and_results_stream(tiny, tmp_path):
  folder = os.fsencode(tmp_path / "videos")
  os.makedirs(folder)
  shutil.copy(os.path.join(FIXTURES, VIDEOS[0]), os.path.join(folder, b"a_caf\xe9.avi"))
  shutil.copy(os.path.join(FIXTURES, VIDEOS[1]), os.path.join(folder, b"b_plain.avi"))
  out = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.predict", f"--checkpoint={tiny['ckpt']}", "--top_k=1",
       "--num_clips=1", "--num_crops=1", str(tmp_path / "videos")], cwd=REPO,
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8"))
  assert out.returncode == 0, out.stderr[-2000:]
  names = [l for l in out.stdout.splitlines() if l.endswith(".avi:")]
  assert names == [f"{tmp_path / 'videos'}/a_caf\\xe9.avi:", f"{tmp_path / 'videos'}/b_plain.avi:"]
  assert "2 of 2 videos classified" in out.stderr


def test_a_batch_that_does_not_fit_in_memory_names_one_that_does(tiny):
  from kpsem_jax.train import memory_fit  # pylint: disable=import-outside-toplevel
  from kpsem_jax import predict
  predictor = load_predictor(tiny["ckpt"])
  spec = predictor.with_spec(num_clips=1, num_crops=1)
  need = {}
  for size in (2, 4):
    shape = jax.ShapeDtypeStruct((size, spec.frames, spec.crop, spec.crop, 3), np.uint8)
    need[size] = memory_fit.need_bytes(predictor._forward.lower(  # pylint: disable=protected-access
        predictor.variables, shape).compile())
  limit = (need[2] + need[4]) / 2 / memory_fit.GIB  # 2 views fit, 4 do not
  with pytest.raises(memory_fit.DoesNotFit, match=r"a batch of 4 views does not fit in the .* "
                     r"a device has: use --batch_size=[23] or less"):
    predict.run(tiny["ckpt"], [os.path.join(FIXTURES, VIDEOS[0])], batch_size=4, num_clips=4,
                num_crops=1, log=lambda m: None, memory_limit_gb=limit)


@pytest.mark.skipif(not has_bf16_units(), reason="this CPU has no bf16 units")
def test_bfloat16_inference_runs_the_backbone_in_bf16_and_agrees_with_float32(tmp_path):
  from kpsem_jax.inference import predictor as predictor_lib  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models import cpu_kernels, layers  # pylint: disable=import-outside-toplevel
  # oneDNN's bf16 convolution: bf16 out, within bf16's rounding of the float32 one.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 10, 10, 16)).astype(np.float32)
  k = (0.1 * rng.normal(size=(3, 3, 3, 4, 16))).astype(np.float32)
  want = np.asarray(layers.conv(x, k, (1, 2, 2), ((1, 1),) * 3, groups=4, conv_strategy="xla"))
  got = cpu_kernels.conv(jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16), (1, 2, 2),
                         ((1, 1),) * 3, groups=4)
  assert got.dtype == jnp.bfloat16
  assert np.abs(np.asarray(got, np.float32) - want).max() < 0.02 * np.abs(want).max()
  # The predictor: backbone variables in bf16, KPSEM's and the classifier's float32.
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt", kpsem=False)
  p32 = load_predictor(str(tmp_path / "ckpt"))
  p16 = load_predictor(str(tmp_path / "ckpt"), precision="bfloat16")
  kinds = {jax.tree_util.keystr(path).split("'")[3]: leaf.dtype for path, leaf in
           jax.tree_util.tree_leaves_with_path(p16._run_variables)}  # pylint: disable=protected-access
  assert kinds == {"backbone": jnp.bfloat16, "classifier": jnp.float32}
  clips = rng.integers(0, 255, (4, 8, 32, 32, 3), np.uint8)
  a, b = p32.uint8_logits(clips), p16.uint8_logits(clips)
  assert b.dtype == np.float32 and 0 < np.abs(a - b).max() < 0.03 * np.abs(a).max()
  with pytest.raises(ValueError, match="unknown precision 'half'"):
    predictor_lib.Predictor(p32.variables, p32.metadata, "half")


def test_bfloat16_without_bf16_units_is_refused_in_one_line(tmp_path, monkeypatch):
  from kpsem_jax.inference import predictor as predictor_lib  # pylint: disable=import-outside-toplevel
  tiny_models.save_tiny_checkpoint(tmp_path / "ckpt", kpsem=False)
  monkeypatch.setattr(predictor_lib, "has_bf16_units", lambda: False)
  with pytest.raises(ValueError, match="needs bf16 units .* this CPU has none: use float32"):
    load_predictor(str(tmp_path / "ckpt"), precision="bfloat16")
