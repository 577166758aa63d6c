"""grain pipeline: sampling protocol, determinism, checkpointable state, sharding, eval views,
frames read one record each (bytes read), the old path's pixels, workers."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import input_pipeline as ip
from kpsem_jax.data import loader_workers
from kpsem_jax.data import prepare as prepare_lib
from kpsem_jax.data import video_source
from kpsem_jax.testing import reference_clips

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")

SPEC = clips_lib.ClipSpec(frames=8, interval=1, crop=24, train_scale=(24, 30), eval_resize=28)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  prepare_lib.prepare("synthetic_motion", data_dir, config="tiny", log=lambda *a: None)
  return data_dir


def record(values, width=40, height=30, label=3, index=0):
  """A fake video: frame i is a horizontal ramp plus the constant values[i]."""
  ramp = np.linspace(0, 150, width)[None, :, None]
  frames = np.stack([np.broadcast_to(ramp + v, (height, width, 3)).astype(np.uint8)
                     for v in values])
  return video_source.Video.from_frames(frames, label=label, index=index)


def batches(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_determinism(tiny_data):
  source, names = video_source.load_source(tiny_data, "synthetic_motion", "tiny", "train")
  assert len(names) == 8
  a = batches(ip.train_loader(source, 4, SPEC, seed=1, process_index=0, process_count=1), 3)
  b = batches(ip.train_loader(source, 4, SPEC, seed=1, process_index=0, process_count=1), 3)
  c = batches(ip.train_loader(source, 4, SPEC, seed=2, process_index=0, process_count=1), 3)
  assert a[0]["clips"].shape == (4, 8, 24, 24, 3) and a[0]["clips"].dtype == np.uint8
  assert a[0]["label"].dtype == np.int32
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["clips"], y["clips"])
  assert any((x["video_index"] != z["video_index"]).any() for x, z in zip(a, c))
  for batch in a:  # labels are those of the stored videos
    for index, label in zip(batch["video_index"], batch["label"]):
      assert source[int(index)].label == label


def test_iterator_state_restores_the_same_batches(tiny_data):
  source, _ = video_source.load_source(tiny_data, "synthetic_motion", "tiny", "train")
  loader = ip.train_loader(source, 4, SPEC, seed=3, process_index=0, process_count=1)
  it = iter(loader)
  for _ in range(5):  # past the first epoch of 32 videos
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(ip.train_loader(source, 4, SPEC, seed=3, process_index=0, process_count=1))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["video_index"], want["video_index"])
    np.testing.assert_array_equal(got["clips"], want["clips"])


def test_processes_read_disjoint_slices_of_the_same_global_batches(tiny_data):
  source, _ = video_source.load_source(tiny_data, "synthetic_motion", "tiny", "train")
  one = list(ip.train_loader(source, 8, SPEC, seed=0, process_index=0, process_count=1,
                             num_epochs=2))
  halves = [list(ip.train_loader(source, 4, SPEC, seed=0, process_index=p, process_count=2,
                                 num_epochs=2)) for p in (0, 1)]
  assert len(one) == len(halves[0]) == len(halves[1]) == 8  # 2 epochs of 32 videos
  for whole, first, second in zip(one, *halves):
    # Process 0 holds the first half of the global batch, process 1 the second: same videos,
    # same augmentation (the record's RNG follows its global position).
    np.testing.assert_array_equal(whole["video_index"][:4], first["video_index"])
    np.testing.assert_array_equal(whole["video_index"][4:], second["video_index"])
    np.testing.assert_array_equal(whole["clips"], np.concatenate([first["clips"],
                                                                  second["clips"]]))
  epoch = [int(i) for b in one[:4] for i in b["video_index"]]
  assert sorted(epoch) == list(range(32))  # each epoch covers every video once


def test_short_videos_loop_and_windows_follow_the_interval():
  rec = record([0, 40, 80])  # 3 frames
  spec = clips_lib.ClipSpec(frames=6, interval=2, crop=24, train_scale=(30, 30), aspect=(1, 1),
                     flip=False)
  clip = clips_lib.train_clip(rec, spec, np.random.default_rng(0))
  offsets = clip.mean(axis=(1, 2, 3)) - clip[0].mean()
  # (start + 2 i) mod 3 from start 0: frames 0, 2, 1, 0, 2, 1
  np.testing.assert_allclose(offsets, [0, 80, 40, 0, 80, 40], atol=6)


def test_a_window_spans_frames_minus_one_intervals_plus_one_frame():
  # 16 frames at interval 2 sample frames s, s+2, .., s+30: 31 frames, as PyTorch-MFNet's
  # samplers' frame_range = (num - 1) * interval + 1.
  assert clips_lib.window_length(16, 2) == 31 and clips_lib.window_length(8, 1) == 8
  assert clips_lib.train_starts(31, 16, 2) == 1  # exactly one window fits: frames 0 .. 30
  assert clips_lib.train_starts(32, 16, 2) == 2  # starts 0 and 1 (frames 1 .. 31)
  assert clips_lib.train_starts(20, 16, 2) == 1  # shorter: start 0, looped
  assert list(clips_lib.window_indices(32, 1, 16, 2)) == list(range(1, 32, 2))  # no wrap from 1
  assert clips_lib.clip_starts(41, 16, 2, 3).tolist() == [0, 5, 10]  # last start: 41 - 31
  assert clips_lib.clip_starts(41, 16, 2, 1).tolist() == [5]  # the centre window
  # Every start training draws keeps the clip inside the video, and the last one is used.
  first_means = []
  for seed in range(200):
    rec = record(list(range(0, 33 * 3, 3)), width=30)  # 33 square frames, frame i: +3 i;
    # scaled to exactly the crop, so only the start changes a frame's mean
    spec = clips_lib.ClipSpec(frames=16, interval=2, crop=24, train_scale=(24, 24), aspect=(1, 1),
                       flip=False)
    clip = clips_lib.train_clip(rec, spec, np.random.default_rng(seed))
    offsets = np.round((clip.mean(axis=(1, 2, 3)) - clip[0].mean()) / 6).astype(int)
    assert offsets.tolist() == list(range(16))  # consecutive sampled frames, no wrap
    first_means.append(clip[0].mean())
  starts = {int(np.round((m - min(first_means)) / 3)) for m in first_means}
  assert starts == {0, 1, 2}  # 33 - 31 + 1 starts, the last one included


def test_horizontal_flip_only_when_enabled():
  rec = record([0] * 8)
  for flip, expect_some in ((True, True), (False, False)):
    spec = clips_lib.ClipSpec(frames=8, interval=1, crop=24, train_scale=(30, 30), aspect=(1, 1),
                       flip=flip)
    flipped = 0
    for seed in range(20):
      clip = clips_lib.train_clip(rec, spec, np.random.default_rng(seed))
      left, right = clip[0, :, :4].mean(), clip[0, :, -4:].mean()
      flipped += left > right  # the ramp rises left to right unless flipped
    assert (flipped > 0) == expect_some and flipped < 20


def test_eval_views_crops_and_padding():
  rec = record(range(0, 80, 10), width=60, height=30)
  spec = clips_lib.ClipSpec(frames=4, interval=1, crop=24, eval_resize=30, num_clips=2, num_crops=3)
  views = clips_lib.eval_views(rec, spec)
  assert all(v.shape == (4, 24, 24, 3) for v in views)
  means = [v[0].mean() for v in views]
  assert means[0] < means[1] < means[2]  # left, centre, right crops of the first clip
  np.testing.assert_allclose(views[3][0], views[0][0] + 40, atol=8)  # 2nd window starts at frame 4

  class Source:
    def __len__(self):
      return 5

    def __getitem__(self, i):
      return video_source.Video(i, i, rec.num_frames, rec._read)

  out = list(ip.eval_batches(Source(), 4, spec, process_index=0, process_count=1))
  assert len(out) == 8  # 5 videos x 6 views = 30 views -> 7 full batches + 1 padded
  assert out[-1]["mask"].tolist() == [True, True, False, False]
  indices = np.concatenate([b["video_index"][b["mask"]] for b in out])
  assert indices.tolist() == [i for i in range(5) for _ in range(6)]
  odd = list(ip.eval_batches(Source(), 4, spec, process_index=1, process_count=2))
  assert sorted(set(np.concatenate([b["video_index"][b["mask"]] for b in odd]))) == [1, 3]
  even = list(ip.eval_batches(Source(), 4, spec, process_index=0, process_count=2))  # 3 videos
  assert len(even) == len(odd) == 5  # equal batch counts on every process
  assert sum(b["mask"].sum() for b in odd) == 12 and not odd[-1]["mask"].any()


def test_missing_data_names_the_command(tmp_path):
  with pytest.raises(video_source.DataNotPreparedError,
                     match=r"python -m kpsem_jax.prepare ucf101 --source_dir=.* --split=3"):
    video_source.load_source(str(tmp_path), "ucf101", "split3", "train")
  with pytest.raises(video_source.DataNotPreparedError,
                     match=r"python -m kpsem_jax.prepare synthetic_motion --data_dir=\S+$"):
    video_source.load_source(str(tmp_path), "synthetic_motion", "default", "train")


@pytest.fixture(scope="module")
def fixture_videos(tmp_path_factory):
  """Two real videos (127 and 280 frames) as a miniature UCF101 train split, stored at a
  128-px short side."""
  if not os.path.isdir(FIXTURES):
    pytest.skip(f"{FIXTURES} not found (the shared fixtures sit beside the repository)")
  root = tmp_path_factory.mktemp("ucf")
  lists = root / "src" / "ucfTrainTestlist"
  lists.mkdir(parents=True)
  shutil.copy(os.path.join(FIXTURES, "splits", "ucf101_ucfTrainTestlist", "classInd.txt"), lists)
  (root / "src" / "UCF-101" / "ApplyEyeMakeup").mkdir(parents=True)
  names = {"ucf101_style_BabyCrawling.avi": "v_ApplyEyeMakeup_g01_c01.avi",
           "kinetics400_arm_wrestling.mp4": "v_ApplyEyeMakeup_g02_c01.mp4"}
  for name, target in names.items():
    shutil.copy(os.path.join(FIXTURES, "videos", name),
                root / "src" / "UCF-101" / "ApplyEyeMakeup" / target)
  (lists / "trainlist01.txt").write_text(
      "".join(f"ApplyEyeMakeup/{t} 1\n" for t in names.values()))
  (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
  data_dir = str(root / "tfds")
  prepare_lib.prepare("ucf101", data_dir, source_dir=str(root / "src"), split=1,
                      short_side=128, log=lambda *a: None)
  source, _ = video_source.load_source(data_dir, "ucf101", "split1", "train")
  return source


def stored_jpegs(source, i):
  """Every stored JPEG of video ``i``, in order."""
  record = source.records[i]
  first = int(record["first_frame"])
  return source.reader.read(record["frames_file"].decode(),
                            range(first, first + int(record["num_frames"])))


def test_train_clips_match_the_whole_frame_path_within_a_level(fixture_videos):
  spec = clips_lib.ClipSpec(frames=8, interval=2, crop=112, train_scale=(112, 144))
  for i in range(len(fixture_videos)):
    decoded = np.stack([reference_clips.pillow_decode(j) for j in stored_jpegs(fixture_videos, i)])
    flips = 0
    for seed in range(6):
      clip = clips_lib.train_clip(fixture_videos[i], spec, np.random.default_rng(seed))
      want = reference_clips.train_clip(decoded, spec, np.random.default_rng(seed))
      difference = np.abs(clip.astype(int) - want.astype(int))
      assert clip.shape == want.shape == (8, 112, 112, 3)
      # Pillow's filter on the crop region alone rounds a few pixels the other way.
      assert difference.max() <= 2 and difference.mean() < 0.2, (i, seed)
      unflipped = clips_lib.train_clip(fixture_videos[i], dataclasses.replace(spec, flip=False),
                                np.random.default_rng(seed))  # the same draws but the last
      flips += int(np.array_equal(clip, unflipped[:, :, ::-1]))
    assert 0 < flips < 6  # the flip is drawn


def test_eval_views_decode_each_frame_once_and_match_the_per_view_path(fixture_videos):
  spec = clips_lib.ClipSpec(frames=4, interval=2, crop=96, eval_resize=112, num_clips=3,
                            num_crops=3)
  video = fixture_videos[1]
  decoded_frames = []

  class Counting(video_source.Video):
    def frames(self, indices):
      for frame in video.frames(indices):
        decoded_frames.append(frame)
        yield frame

  views = clips_lib.eval_views(Counting(1, video.label, video.num_frames, None), spec)
  assert views.shape == (9, 4, 96, 96, 3)
  assert len(decoded_frames) == 3 * 4  # 3 clips of 4 frames, not once per crop
  decoded = np.stack([reference_clips.pillow_decode(j) for j in stored_jpegs(fixture_videos, 1)])
  for v in range(9):
    np.testing.assert_array_equal(views[v], reference_clips.eval_view(decoded, v, spec))


def _read_chars() -> int:
  with open("/proc/self/io") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_a_clip_reads_only_its_own_frames(fixture_videos):
  spec = clips_lib.ClipSpec(frames=16, interval=2, crop=112, train_scale=(112, 144))
  video = fixture_videos[1]  # 280 frames
  assert video.num_frames == 280
  jpegs = stored_jpegs(fixture_videos, 1)
  clips_lib.train_clip(video, spec, np.random.default_rng(0))  # the frame file's index is read once
  for seed in range(1, 4):
    rng = np.random.default_rng(seed)
    start = int(np.random.default_rng(seed).integers(0, clips_lib.train_starts(280, 16, 2)))
    sampled = sum(len(jpegs[i]) for i in clips_lib.window_indices(280, start, 16, 2))
    counted, before = fixture_videos.bytes_read, _read_chars()
    clips_lib.train_clip(video, spec, rng)
    read = _read_chars() - before
    assert fixture_videos.bytes_read - counted == sampled  # the loader's own count
    assert sampled <= read <= 2 * sampled  # what the process read, page cache included
    assert read * 8 < sum(len(j) for j in jpegs)  # the whole video is 17x the clip


def test_batches_do_not_depend_on_the_worker_count_and_resume_at_a_step(tiny_data):
  source, _ = video_source.load_source(tiny_data, "synthetic_motion", "tiny", "train")
  loader = ip.train_loader(source, 4, SPEC, seed=5, process_index=0, process_count=1)
  in_process = batches(loader, 6)
  with_workers = ip.train_loader(source, 4, SPEC, seed=5, worker_count=2, process_index=0,
                                 process_count=1).iterator(2)  # a run resumed at step 2
  for want in in_process[2:]:
    got = next(with_workers)
    np.testing.assert_array_equal(got["video_index"], want["video_index"])
    np.testing.assert_array_equal(got["clips"], want["clips"])
  assert with_workers.get_state() == {"step": 6}
  with_workers.close()


def test_a_dataset_in_the_old_whole_video_layout_says_to_rebuild(tmp_path):
  old = tmp_path / "synthetic_motion" / "tiny" / "1.0.0"
  old.mkdir(parents=True)
  (old / "dataset_info.json").write_text("{}")
  with pytest.raises(video_source.DataNotPreparedError, match=r"old layout that reads whole videos "
                     r"\(version 1.0.0\); rebuild it with:\n  python -m kpsem_jax.prepare "
                     r"synthetic_motion --data_dir=\S+ --config=tiny$"):
    video_source.load_source(str(tmp_path), "synthetic_motion", "tiny", "train")


def test_num_workers_minus_one_is_one_per_usable_core(monkeypatch):
  assert loader_workers.resolve_workers(3) == 3 and loader_workers.resolve_workers(0) == 0
  monkeypatch.setattr(loader_workers, "usable_cores", lambda: 6)
  assert loader_workers.resolve_workers(-1) == 6
  monkeypatch.setattr(loader_workers, "usable_cores", lambda: 1)
  assert loader_workers.resolve_workers(-1) == 0  # one core: in process


LOADER_SCRIPT = """
import sys
from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import input_pipeline as ip
from kpsem_jax.data import video_source
if __name__ == "__main__":
  source, _ = video_source.load_source(sys.argv[1], "synthetic_motion", "tiny", "train")
  spec = clips_lib.ClipSpec(frames=8, interval=1, crop=24, train_scale=(24, 30), eval_resize=28)
  batches = ip.train_loader(source, 4, spec, seed=1, worker_count=2, process_index=0,
                            process_count=1, num_epochs=1)
  views = ip.eval_batches(source, 4, spec, 0, 1, worker_count=2)
  print(sum(1 for _ in batches), sum(1 for _ in views))
"""


def test_worker_processes_leave_no_shared_memory_behind(tiny_data, tmp_path):
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  script = tmp_path / "loader.py"
  script.write_text(LOADER_SCRIPT)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, str(script), tiny_data], cwd=repo, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ["8", "8"]  # 32 videos: 8 batches of 4, and 8 of views
  assert "leaked" not in done.stderr  # grain's shared memory is unlinked on receipt
