"""grain pipeline: sampling protocol, determinism, checkpointable state, sharding, eval views."""

import numpy as np
import pytest

from data import common
from kpsem_jax import input_pipeline as ip
from kpsem_jax import prepare as prepare_lib

SPEC = ip.ClipSpec(frames=8, interval=1, crop=24, train_scale=(24, 30), eval_resize=28)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  prepare_lib.prepare("synthetic_motion", data_dir, config="tiny", log=lambda *a: None)
  return data_dir


def record(values, width=40, height=30, label=3):
  """A fake stored video: frame i is a horizontal ramp plus the constant values[i]."""
  ramp = np.linspace(0, 150, width)[None, :, None]
  frames = [common.encode_jpeg(np.broadcast_to(ramp + v, (height, width, 3)).astype(np.uint8))
            for v in values]
  return {"frames": frames, "label": label}


def batches(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_determinism(tiny_data):
  source, names = ip.load_source(tiny_data, "synthetic_motion", "tiny", "train")
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
      assert source[int(index)]["label"] == label


def test_iterator_state_restores_the_same_batches(tiny_data):
  source, _ = ip.load_source(tiny_data, "synthetic_motion", "tiny", "train")
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
  source, _ = ip.load_source(tiny_data, "synthetic_motion", "tiny", "train")
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
  spec = ip.ClipSpec(frames=6, interval=2, crop=24, train_scale=(30, 30), aspect=(1, 1),
                     flip=False)
  clip = ip.TrainClip(spec).random_map((0, rec), np.random.default_rng(0))["clips"]
  offsets = clip.mean(axis=(1, 2, 3)) - clip[0].mean()
  # (start + 2 i) mod 3 from start 0: frames 0, 2, 1, 0, 2, 1
  np.testing.assert_allclose(offsets, [0, 80, 40, 0, 80, 40], atol=6)


def test_horizontal_flip_only_when_enabled():
  rec = record([0] * 8)
  for flip, expect_some in ((True, True), (False, False)):
    spec = ip.ClipSpec(frames=8, interval=1, crop=24, train_scale=(30, 30), aspect=(1, 1),
                       flip=flip)
    flipped = 0
    for seed in range(20):
      clip = ip.TrainClip(spec).random_map((0, rec), np.random.default_rng(seed))["clips"]
      left, right = clip[0, :, :4].mean(), clip[0, :, -4:].mean()
      flipped += left > right  # the ramp rises left to right unless flipped
    assert (flipped > 0) == expect_some and flipped < 20


def test_eval_views_crops_and_padding():
  rec = record(range(0, 80, 10), width=60, height=30)
  spec = ip.ClipSpec(frames=4, interval=1, crop=24, eval_resize=30, num_clips=2, num_crops=3)
  views = [ip.eval_view(rec, 7, v, spec)["clips"] for v in range(6)]
  assert all(v.shape == (4, 24, 24, 3) for v in views)
  means = [v[0].mean() for v in views]
  assert means[0] < means[1] < means[2]  # left, centre, right crops of the first clip
  np.testing.assert_allclose(views[3][0], views[0][0] + 40, atol=8)  # 2nd window starts at frame 4

  class Source:
    def __len__(self):
      return 5

    def __getitem__(self, i):
      return dict(rec, label=i)

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
  with pytest.raises(ip.DataNotPreparedError,
                     match=r"python -m kpsem_jax.prepare ucf101 --source_dir=.* --split=3"):
    ip.load_source(str(tmp_path), "ucf101", "split3", "train")
  with pytest.raises(ip.DataNotPreparedError,
                     match=r"python -m kpsem_jax.prepare synthetic_motion --data_dir=\S+$"):
    ip.load_source(str(tmp_path), "synthetic_motion", "default", "train")
