"""Dataset builders on miniature layouts made of the real fixtures and official split files."""

import csv
import os
import shutil
import time

import numpy as np
import pytest

from kpsem_jax.builders.synthetic_motion import synthetic_motion_dataset_builder as synthetic
from kpsem_jax.config_base import load_config
from kpsem_jax.data import frames as frames_lib
from kpsem_jax.data import prepare as prepare_lib
from kpsem_jax.data import video_builder

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
VIDEOS = os.path.join(SHARED, "videos")
SPLITS = os.path.join(SHARED, "splits")


@pytest.fixture(autouse=True)
def need_fixtures():
  if not os.path.isdir(SHARED):
    pytest.skip(f"{SHARED} not found (the shared fixtures sit beside the repository)")


def quiet(*args):
  del args


def build(dataset, tmp_path, **kwargs):
  builder, skipped = prepare_lib.prepare(dataset, str(tmp_path / "tfds"), short_side=64,
                                         log=quiet, **kwargs)
  return builder, skipped


def with_bom(*paths):
  """Prefixes each file with a UTF-8 byte order mark, as some editors save them."""
  for path in paths:
    os.chmod(path, 0o644)  # copies of the read-only shared fixtures
    data = open(path, "rb").read()
    open(path, "wb").write(b"\xef\xbb\xbf" + data)


def no_bom_in(skipped):
  return not any("\ufeff" in path or "\ufeff" in reason for _, path, reason in skipped)


def read_all(builder, split):
  """Every stored example of a split, each with its ``frames`` (JPEG bytes) read back."""
  source = builder.as_data_source(split)
  reader = frames_lib.FrameReader(builder.data_dir)
  examples = []
  for i in range(len(source)):
    example = dict(source[i])
    first = int(example["first_frame"])
    example["frames"] = reader.read(example["frames_file"].decode(),
                                    range(first, first + int(example["num_frames"])))
    examples.append(example)
  return examples


def hmdb51_layout(root, classes=("brush_hair", "cartwheel")):
  """Two HMDB51 classes: their official split files and three real clips under listed names."""
  splits = root / "testTrainMulti_7030_splits"
  splits.mkdir(parents=True)
  listed = {}
  for name in classes:
    for n in (1, 2, 3):
      src = os.path.join(SPLITS, "hmdb51_testTrainMulti_7030_splits", f"{name}_test_split{n}.txt")
      shutil.copy(src, splits)
    lines = [l.split() for l in open(splits / f"{name}_test_split1.txt") if l.strip()]
    listed[name] = lines
    (root / name).mkdir()
  with_bom(*(splits / f for f in os.listdir(splits)))
  brush_train = next(v for v, tag in listed["brush_hair"] if tag == "1")
  brush_test = next(v for v, tag in listed["brush_hair"] if tag == "2")
  cart_train = next(v for v, tag in listed["cartwheel"] if tag == "1")
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_ApplyEyeMakeup.avi"), root / "brush_hair" / brush_train)
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_BabyCrawling.avi"), root / "brush_hair" / brush_test)
  shutil.copy(os.path.join(VIDEOS, "kinetics_style_flipping_pancake.mkv"), root / "cartwheel" / cart_train)
  return listed, {brush_train: 0, brush_test: 0, cart_train: 1}


def test_hmdb51_from_official_split_files(tmp_path):
  listed, present = hmdb51_layout(tmp_path / "src")
  builder, skipped = build("hmdb51", tmp_path, source_dir=str(tmp_path / "src"), split=1)
  assert builder.info.features["label"].names == ["brush_hair", "cartwheel"]
  train, test = read_all(builder, "train"), read_all(builder, "test")
  assert len(train) == 2 and len(test) == 1
  got = {e["video_id"].decode().split("/", 1)[1]: e["label"] for e in train + test}
  assert got == present
  used = sum(1 for lines in listed.values() for _, tag in lines if tag in ("1", "2"))
  assert used == 200 and len(skipped) == used - 3  # 70 train + 30 test per class
  assert all("not found" in reason for _, _, reason in skipped) and no_bom_in(skipped)
  report = open(os.path.join(builder.data_dir, "skipped.tsv")).read().splitlines()
  assert len(report) == 1 + len(skipped)
  # The MKV's header says 0 frames: the stored count is what was decoded, frames resized.
  mkv = next(e for e in train if e["label"] == 1)
  assert mkv["num_frames"] == len(mkv["frames"]) == 310
  assert (mkv["width"], mkv["height"]) == (426, 240)
  frame = frames_lib.decode_jpeg(mkv["frames"][0])
  assert frame.shape == (64, 114, 3)


FAKE_UNAR = """#!{python}
# Stand-in for Debian's unar in tests (nothing here can write RAR): the '.rar' files are zips.
import sys, zipfile
args = sys.argv[1:]
out = args[args.index("-o") + 1]
zipfile.ZipFile(args[-1]).extractall(out)
"""


def test_hmdb51_from_the_distributed_rar_archives(tmp_path, monkeypatch):
  import sys
  import zipfile
  listed, present = hmdb51_layout(tmp_path / "folders")
  src = tmp_path / "src"
  src.mkdir()
  shutil.move(str(tmp_path / "folders" / "testTrainMulti_7030_splits"), src)
  inner = []
  for name in ("brush_hair", "cartwheel"):
    with zipfile.ZipFile(tmp_path / f"{name}.rar", "w") as z:
      for f in os.listdir(tmp_path / "folders" / name):
        z.write(tmp_path / "folders" / name / f, f"{name}/{f}")
    inner.append(tmp_path / f"{name}.rar")
  with zipfile.ZipFile(src / "hmdb51_org.rar", "w") as z:
    for f in inner:
      z.write(f, f.name)
  monkeypatch.setenv("PATH", "/nonexistent")
  with pytest.raises(FileNotFoundError, match="no extractor was found: install one"):
    build("hmdb51", tmp_path, source_dir=str(src), split=1)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "unar").write_text(FAKE_UNAR.format(python=sys.executable))
  (bin_dir / "unar").chmod(0o755)
  monkeypatch.setenv("PATH", str(bin_dir))
  builder, _ = build("hmdb51", tmp_path, source_dir=str(src), split=1)
  got = {e["video_id"].decode().split("/", 1)[1]: e["label"]
         for split in ("train", "test") for e in read_all(builder, split)}
  assert got == present
  assert (tmp_path / "tfds" / "downloads" / "extracted" / "hmdb51" / "cartwheel").is_dir()


def test_malformed_split_line_names_file_and_line(tmp_path):
  hmdb51_layout(tmp_path / "src")
  path = tmp_path / "src" / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
  lines = open(path).read().splitlines()
  lines.insert(4, "broken_line_without_tag.avi")
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(video_builder.SplitFileError, match=r"cartwheel_test_split1.txt, line 5: "
                     r"'broken_line_without_tag.avi'"):
    build("hmdb51", tmp_path, source_dir=str(tmp_path / "src"), split=1)


def test_ucf101_labels_from_classind_and_case_mismatch(tmp_path):
  src = tmp_path / "src"
  shutil.copytree(os.path.join(SPLITS, "ucf101_ucfTrainTestlist"), src / "ucfTrainTestlist")
  (src / "UCF-101" / "ApplyEyeMakeup").mkdir(parents=True)
  (src / "UCF-101" / "HandstandPushups").mkdir(parents=True)
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_ApplyEyeMakeup.avi"),
              src / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")  # test list
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_BabyCrawling.avi"),
              src / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g08_c01.avi")  # train
  corrupt = src / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"  # train list
  corrupt.write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 10)
  # A cut download (the first 20,000 bytes of a 127-frame AVI) decodes one frame.
  cut = src / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g09_c01.avi"  # train list
  with open(os.path.join(VIDEOS, "ucf101_style_BabyCrawling.avi"), "rb") as f:
    cut.write_bytes(f.read(20000))
  # Saved with a byte order mark; trainlist01's first line is the corrupt video above.
  with_bom(*(src / "ucfTrainTestlist" / f for f in ("classInd.txt", "trainlist01.txt",
                                                   "testlist01.txt")))
  builder, skipped = build("ucf101", tmp_path, source_dir=str(src), split=1)
  names = builder.info.features["label"].names
  class_ind = [l.split()[1] for l in open(src / "ucfTrainTestlist" / "classInd.txt") if l.strip()]
  assert names == class_ind and names != sorted(names)  # classInd order, not sorted()
  assert names[36] == "HandstandPushups"
  train, test = read_all(builder, "train"), read_all(builder, "test")
  assert [(e["label"], e["num_frames"]) for e in train] == [(36, 127)]
  assert [(e["label"], e["num_frames"]) for e in test] == [(0, 164)]
  reasons = {os.path.basename(p): r for _, p, r in skipped}
  assert "no video stream" in reasons["v_ApplyEyeMakeup_g08_c01.avi"]  # skipped, reported
  assert reasons["v_ApplyEyeMakeup_g09_c01.avi"].endswith(
      "v_ApplyEyeMakeup_g09_c01.avi: decoded 1 of ~127 frames (truncated or damaged file)")
  report = open(os.path.join(builder.data_dir, "skipped.tsv")).read()
  assert "decoded 1 of ~127 frames" in report
  assert no_bom_in(skipped)
  assert len(skipped) == 9537 + 3783 - 2


def test_mini_kinetics_missing_clips_are_counted(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  rows = list(csv.reader(open(os.path.join(SPLITS, "mini_kinetics200", "kinetics_200_val.csv"))))
  arm = next(r for r in rows[1:] if r[0] == "arm wrestling")
  shutil.copy(os.path.join(VIDEOS, "kinetics400_arm_wrestling.mp4"),
              src / f"{arm[1]}_{int(arm[2]):06d}_{int(arm[3]):06d}.mp4")
  splits = tmp_path / "splits"
  shutil.copytree(os.path.join(SPLITS, "mini_kinetics200"), splits)
  with_bom(*(splits / f for f in ("classes.txt", "kinetics_200_train.csv",
                                  "kinetics_200_val.csv")))
  said = []
  builder, skipped = prepare_lib.prepare("mini_kinetics", str(tmp_path / "tfds"), short_side=64,
                                         log=said.append, source_dir=str(src),
                                         splits_dir=str(splits))
  # The summary names the build and, per skipped file shown, the file itself.
  assert said[0] == f"mini_kinetics (default) in {builder.data_dir}", said[:2]
  shown = [l for l in said if l.startswith("    ")]
  assert len(shown) == 5 and all(
      l.startswith(f"    {s}: {p}: listed in ") for l, (s, p, _) in zip(shown, skipped)), shown
  names = builder.info.features["label"].names
  assert len(names) == 200 and names == sorted(names) and names[0] == "abseiling"
  (val,) = read_all(builder, "validation")
  assert names[val["label"]] == "arm wrestling" and val["num_frames"] == 280
  assert abs(val["fps"] - 28.0) < 0.5
  assert sum(1 for s, _, _ in skipped if s == "validation") == 5000 - 1
  assert sum(1 for s, _, _ in skipped if s == "train") == 80000
  assert builder.empty_splits == ["train"] and list(builder.info.splits) == ["validation"]


def test_kinetics400_from_the_annotation_csv_shares_the_kinetics_reader(tmp_path):
  src = tmp_path / "src" / "val" / "arm wrestling"  # a download script's folders
  src.mkdir(parents=True)
  path = os.path.join(SPLITS, "kinetics400", "kinetics-400_val.csv")
  rows = list(csv.reader(open(path)))
  arm = next(r for r in rows[1:] if r[0] == "arm wrestling")
  shutil.copy(os.path.join(VIDEOS, "kinetics400_arm_wrestling.mp4"),
              src / f"{arm[1]}_{int(arm[2]):06d}_{int(arm[3]):06d}.mp4")
  splits = tmp_path / "splits"
  splits.mkdir()
  shutil.copy(path, splits)  # the validation CSV only: the train split is left out
  with_bom(splits / "kinetics-400_val.csv")
  builder, skipped = build("kinetics400", tmp_path, source_dir=str(tmp_path / "src"),
                           splits_dir=str(splits))
  names = builder.info.features["label"].names
  assert len(names) == 400 and names == sorted(names) and names[0] == "abseiling"
  (val,) = read_all(builder, "validation")
  assert names[val["label"]] == "arm wrestling" and val["num_frames"] == 280
  assert list(builder.info.splits) == ["validation"]
  assert len(skipped) == len(rows) - 2 and all("not downloaded" in r for _, _, r in skipped)
  assert builder.data_dir.endswith(
      os.path.join("kinetics400", "default", video_builder.LAYOUT_VERSION))
  # A line that is not a Kinetics row names the file and line.
  with open(splits / "kinetics-400_val.csv", "a") as f:
    f.write("arm wrestling,tooShort,1,11,val,0\n")
  with pytest.raises(video_builder.SplitFileError, match=r"kinetics-400_val.csv, line 19908: "):
    build("kinetics400", tmp_path / "again", source_dir=str(tmp_path / "src"),
          splits_dir=str(splits))


def test_something_v1_from_frame_folders(tmp_path):
  src = tmp_path / "src"
  lines = open(os.path.join(SPLITS, "something_something_v1",
                            "something-something-v1-validation.csv")).read().splitlines()
  video_id, label = lines[0].split(";")
  frames = src / video_id
  frames.mkdir(parents=True)
  for i, name in enumerate(sorted(os.listdir(os.path.join(VIDEOS, "frames_ApplyEyeMakeup")))):
    shutil.copy(os.path.join(VIDEOS, "frames_ApplyEyeMakeup", name), frames / f"{i + 1:05d}.jpg")
  splits = tmp_path / "splits"
  shutil.copytree(os.path.join(SPLITS, "something_something_v1"), splits)
  with_bom(*(splits / f for f in os.listdir(splits)))
  builder, skipped = build("something_something_v1", tmp_path, source_dir=str(src),
                           splits_dir=str(splits))
  names = builder.info.features["label"].names
  assert len(names) == 174 and names[0] == "Holding something"  # labels.csv line order
  (val,) = read_all(builder, "validation")
  assert names[val["label"]] == label and val["num_frames"] == 10
  assert frames_lib.decode_jpeg(val["frames"][0]).shape == (64, 86, 3)  # even sizes
  assert len(skipped) == 86017 + 11522 - 1 and no_bom_in(skipped)
  # A minimum above its 10 frames skips it, with the reason: here the split's only video.
  with pytest.raises(ValueError) as error:
    prepare_lib.prepare("something_something_v1", str(tmp_path / "tfds_min"),
                        source_dir=str(src), splits_dir=str(splits), short_side=64,
                        min_frames=11, log=quiet)
  assert str(error.value) == (
      "something_something_v1 (default): no video of the validation split could be used, so "
      f"it cannot be written; the last one skipped: {frames}: 10 frames, fewer than "
      "--min_frames=11")


def test_synthetic_motion_is_deterministic_and_motion_defined(tmp_path):
  builder, skipped = build("synthetic_motion", tmp_path, config="tiny")
  assert skipped == []
  train = read_all(builder, "train")
  assert len(train) == 32 and len(read_all(builder, "test")) == 16
  assert sorted(np.bincount([e["label"] for e in train])) == [4] * 8
  again = synthetic.render(3, 32, 8, np.random.default_rng([0, 0, 11]))
  stored = next(e for e in train if e["video_id"] == b"synthetic_0_000011")
  decoded = np.stack([frames_lib.decode_jpeg(f) for f in stored["frames"]])
  other = synthetic.render(3, 32, 8, np.random.default_rng([0, 0, 19]))
  same_error = np.abs(decoded.astype(int) - again.astype(int)).mean()  # JPEG loss only
  assert same_error < 15 < 2 * same_error < np.abs(decoded.astype(int) - other.astype(int)).mean()
  # Time-reversed pairs: the paths of class 2k reversed are paths of class 2k+1.
  for classes in (synthetic.CLASSES, synthetic.TRANSLATION_CLASSES):
    for label in (0, 2, 4, 6):
      forward = synthetic._path(np.random.default_rng(5), classes, label, 8, 64)
      backward = synthetic._path(np.random.default_rng(5), classes, label + 1, 8, 64)
      for a, b in zip(forward, backward):
        np.testing.assert_allclose(a[::-1], b, atol=1e-9)


def test_the_background_drift_is_centred_so_a_reversed_clip_is_a_reversed_class_clip():
  rng = np.random.default_rng(0)
  for frames in (8, 15, 16):
    for _ in range(50):
      drift = rng.uniform(-0.02, 0.02, size=2) * 64  # render's draw
      pad = int(np.ceil(np.abs(drift).max() * frames)) + 1
      forward = synthetic.background_offsets(drift, frames, pad)
      # Played backwards, the offsets are exactly those of the opposite drift: the clip is
      # one its reversed class renders with the background drifting the other way.
      np.testing.assert_array_equal(forward[::-1], synthetic.background_offsets(-drift, frames, pad))
      assert forward.min() >= 0 and forward.max() <= 2 * pad  # inside the padded background
      # Anchored at frame 0, as before 2.1.0, the reversal is off by the whole path.
      anchored = pad + np.round(drift[None, :] * np.arange(frames)[:, None])
      assert not np.array_equal(anchored[::-1], pad + np.round(-drift[None, :] *
                                                               np.arange(frames)[:, None]))


def test_training_builds_the_current_synthetic_version_beside_an_older_one(tmp_path):
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path / "tfds"
  builder, _ = build("synthetic_motion", tmp_path, config="tiny")
  old = os.path.join(os.path.dirname(builder.data_dir), "2.0.0")
  os.rename(builder.data_dir, old)  # as prepared before the drift was centred
  config = load_config("synthetic", "tiny")
  config.dataset.data_dir = str(data_dir)
  run = trainer.Trainer(config, str(tmp_path / "work"))
  assert sorted(n for n in os.listdir(os.path.dirname(old)) if n[0] != ".") == ["2.0.0", "2.1.0"]
  assert len(run.train_source) == 32  # read from the new build


def test_synthetic_translation_moves_each_class_its_own_way_inside_the_frame():
  config = next(c for c in synthetic.Builder.BUILDER_CONFIGS if c.name == "translation")
  assert config.classes == synthetic.TRANSLATION_CLASSES and config.span == (0.5, 0.7)
  arrow = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
  for label, name in enumerate(config.classes):
    want = np.sum([arrow[w] for w in name.split("_")[1:]], axis=0)
    want = want / np.linalg.norm(want)
    for draw in range(20):
      x, y, radius = synthetic._path(np.random.default_rng(draw), config.classes, label, 16, 64,
                                     config.span)
      step = np.stack([np.diff(x), np.diff(y)], -1)  # (15, 2): the same step every frame
      np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape), atol=1e-9)
      np.testing.assert_allclose(step[0] / np.linalg.norm(step[0]), want, atol=1e-9)
      assert 0.5 * 64 <= np.linalg.norm(step[0]) * 15 <= 0.7 * 64  # the whole-clip span
      assert (x - radius >= 0).all() and (x + radius <= 64).all()
      assert (y - radius >= 0).all() and (y + radius <= 64).all()


def test_the_hard_translation_set_has_a_smaller_object_and_faster_camera_motion():
  configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}
  easy, hard = configs["translation"], configs["translation_hard"]
  assert (easy.drift, easy.radius) == (0.02, (10, 7))  # the defaults: translation unchanged
  assert (hard.drift, hard.radius) == (0.06, (16, 12))
  assert (hard.classes, hard.span, hard.frames) == (easy.classes, easy.span, easy.frames)
  # The defaults draw exactly the clips the configs without these fields drew.
  np.testing.assert_array_equal(
      synthetic.render(2, 64, 15, np.random.default_rng(3), easy.classes, easy.span),
      synthetic.render(2, 64, 15, np.random.default_rng(3), easy.classes, easy.span, 0.02,
                       (10, 7)))
  for draw in range(20):
    x, y, radius = synthetic._path(np.random.default_rng(draw), hard.classes, 0, 15, 64,
                                   hard.span, hard.radius)
    assert 64 / 16 <= radius[0] <= 64 / 12
    backward = synthetic._path(np.random.default_rng(draw), hard.classes, 1, 15, 64,
                               hard.span, hard.radius)
    for a, b in zip((x, y, radius), backward):
      np.testing.assert_allclose(a[::-1], b, atol=1e-9)
  # The camera: consecutive frames differ far more under the hard set's drift than with none.
  def change(drift):
    clips = [synthetic.render(0, 64, 15, np.random.default_rng(d), hard.classes, hard.span,
                              drift, hard.radius).astype(float) for d in range(4)]
    return np.mean([np.abs(np.diff(c, axis=0)).mean() for c in clips])
  assert change(0.06) > 3 * change(0.0)


def test_the_key_object_sets_add_plain_distractors_and_keep_every_other_clip():
  configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}
  for n in (0, 1, 2, 4, 8):
    c = configs[f"key_object_{n}"]
    assert (c.distractors, c.test_per_class * len(c.classes), c.drift, c.size) == (
        n, 1024, 0.005, 96)
    assert (c.classes, c.span, c.radius, c.frames) == (synthetic.TRANSLATION_CLASSES, (0.5, 0.7),
                                                       (16, 12), 15)
  hard = configs["translation_hard"]
  # distractors=0 draws exactly the clips drawn without the field
  np.testing.assert_array_equal(
      synthetic.render(2, 64, 15, np.random.default_rng(3), hard.classes, hard.span, hard.drift,
                       hard.radius),
      synthetic.render(2, 64, 15, np.random.default_rng(3), hard.classes, hard.span, hard.drift,
                       hard.radius, 0))
  # Distractor paths: straight, the object's length, inside the frame, in every direction.
  angles = []
  for draw in range(200):
    (x, y), = synthetic._distractor_paths(np.random.default_rng(draw), 1, 15, 64, 5.0, (0.5, 0.7))
    step = np.stack([np.diff(x), np.diff(y)], -1)
    np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape), atol=1e-9)
    assert 0.5 * 64 <= np.linalg.norm(step[0]) * 14 <= 0.7 * 64
    assert x.min() >= 5 and x.max() <= 59 and y.min() >= 5 and y.max() <= 59
    angles.append(np.arctan2(step[0, 1], step[0, 0]))
  assert np.histogram(angles, bins=4, range=(-np.pi, np.pi))[0].min() > 30  # no direction favoured
  # More distractors, more moving pixels between frames.
  def change(count):
    return np.mean([np.abs(np.diff(synthetic.render(
        0, 64, 15, np.random.default_rng(d), hard.classes, hard.span, 0.0, hard.radius,
        count).astype(float), axis=0)).mean() for d in range(4)])
  assert change(8) > change(2) > change(0)


def test_striped_distractors_share_the_key_objects_stripes_and_differ_in_hue():
  configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}
  c = configs["key_object_striped_8_16"]
  assert (c.distractors, c.striped_distractors, c.train_per_class, c.size) == (8, True, 16, 96)
  # Striped distractors: textured discs, so frames hold more bright-dark edges than with
  # plain ones drawn on the same paths.
  def edges(striped):
    clip = synthetic.render(0, 96, 15, np.random.default_rng(1), c.classes, c.span, 0.0,
                            c.radius, 8, striped).astype(float)
    return np.abs(np.diff(clip, axis=2)).mean()
  assert edges(True) > 1.08 * edges(False)
  # Without distractors the flag draws a red-orange key object (red its strongest channel).
  # The same draws with the flag off differ only in that colour: only the object's pixels.
  clips = [synthetic.render(0, 96, 15, np.random.default_rng(2), c.classes, c.span, 0.0,
                            c.radius, 0, flag).astype(float) for flag in (True, False)]
  bright_stripes = (np.abs(clips[0] - clips[1]).sum(-1) > 60) & (clips[0].sum(-1) > 200)
  key = clips[0][bright_stripes]
  assert len(key) > 100 and (key[:, 0] > key[:, 1:].max(-1)).mean() > 0.95
  # Distractor hues: red is the weakest channel; textures have both bright and dark stripes.
  hues = synthetic._hues_without_red(np.random.default_rng(0), 50)
  assert hues.shape == (50, 3) and (hues[:, 0] < hues[:, 1:].min(-1)).all()
  assert synthetic._stripes(np.random.default_rng(0), 96).mean() == pytest.approx(0.5, abs=0.1)


def test_wrapping_sets_jump_farther_than_the_frame_allows_and_stay_time_reversal_pairs():
  configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}
  c = configs["key_object_wrap_150"]
  assert (c.wrap, c.span, c.distractors, c.train_per_class) == (True, (1.5, 1.7), 4, 256)
  for draw in range(20):
    label = draw % 8
    x, y, _ = synthetic._path(np.random.default_rng(draw), c.classes, label, 15, 96, c.span,
                              c.radius, wrap=True)
    rx, ry, _ = synthetic._path(np.random.default_rng(draw), c.classes, label ^ 1, 15, 96,
                                c.span, c.radius, wrap=True)
    np.testing.assert_allclose(x[::-1], rx, atol=1e-9)  # the pair: the same path reversed
    np.testing.assert_allclose(y[::-1], ry, atol=1e-9)
    assert x.min() >= 0 and x.max() < 96 and y.min() >= 0 and y.max() < 96
    # Every step, taken the short way round the torus, is 1/14 of a span of 1.5-1.7 frames.
    step = np.hypot((np.diff(x) + 48) % 96 - 48, (np.diff(y) + 48) % 96 - 48)
    assert (step * 14 >= 1.5 * 96 - 1e-6).all() and (step * 14 <= 1.7 * 96 + 1e-6).all()
  # far30: about 30% of the videos draw a far span (2.2-2.4 frames), whatever the class.
  c = configs["key_object_wrap_far30"]
  spans = []
  for draw in range(400):
    x, y, _ = synthetic._path(np.random.default_rng(draw), c.classes, draw % 8, 15, 96, c.span,
                              c.radius, True, c.far, c.far_span)
    spans.append(np.hypot((np.diff(x) + 48) % 96 - 48, (np.diff(y) + 48) % 96 - 48)[0] * 14 / 96)
  spans = np.array(spans)
  far = spans > 2.0
  assert ((spans[~far] >= 1.2 - 1e-6) & (spans[~far] <= 1.5 + 1e-6)).all()
  assert ((spans[far] >= 2.2 - 1e-6) & (spans[far] <= 2.4 + 1e-6)).all()
  assert 0.24 < far.mean() < 0.36
  # A disc at the right edge shows on the left edge too (the torus distance).
  d = synthetic._distance(np.array([0.0, 95.0, 50.0]), np.zeros(3), 95.5, 0.0, 96, True)
  np.testing.assert_allclose(d, [0.5, 0.5, 45.5])


def test_faint_sets_draw_an_opacity_per_video_and_change_only_the_key_objects_pixels():
  configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}
  c, base = configs["key_object_faint_40"], configs["key_object_wrap_150"]
  assert c.faint == 0.4 and (c.span, c.wrap, c.distractors) == (base.span, True, 4)
  opacities = np.array([synthetic.key_object_opacity(0, 1, i, c.faint) for i in range(2000)])
  assert opacities.min() >= 0 and opacities.max() <= 0.4
  assert np.histogram(opacities, bins=4, range=(0, 0.4))[0].min() > 400  # uniform
  assert synthetic.key_object_opacity(0, 1, 7, 0.0) == 1.0  # the other sets: opaque
  # Every split of key_object_faint_<a> draws; key_object_faint_test_<a> only its test split,
  # so its training videos are key_object_wrap_150's.
  test_only = configs["key_object_faint_test_40"]
  assert [synthetic.faint_of(c, s) for s in ("train", "test")] == [0.4, 0.4]
  assert [synthetic.faint_of(test_only, s) for s in ("train", "test")] == [0.0, 0.4]
  assert [synthetic.faint_of(base, s) for s in ("train", "test")] == [0.0, 0.0]
  for field in ("span", "wrap", "distractors", "drift", "radius", "train_per_class", "seed"):
    assert getattr(test_only, field) == getattr(base, field), field
  # The same draws at opacity 1 and 0: only the key object's pixels differ, and at 0 the
  # clip is the one without it (1 equals the sets without ``faint``: nothing else moved).
  def clip(opacity):
    return synthetic.render(3, 96, 15, np.random.default_rng(5), c.classes, c.span, c.drift,
                            c.radius, 4, wrap=True, opacity=opacity).astype(float)
  opaque, none, half = clip(1.0), clip(0.0), clip(0.5)
  np.testing.assert_array_equal(opaque, synthetic.render(
      3, 96, 15, np.random.default_rng(5), c.classes, c.span, c.drift, c.radius, 4, wrap=True))
  # Pixel noise is drawn after the blend from the same stream, so the clips differ only
  # where the key object is: a disc of radius 6-8 and its soft edge, in each frame.
  for frame in range(15):
    changed = np.abs(opaque[frame] - none[frame]).sum(-1) > 0
    assert 80 < changed.sum() < np.pi * 15 ** 2  # within 7 pixels of a radius-8 disc
    strong = np.abs(opaque[frame] - none[frame]) > 40  # on the object's bright stripes
    midway = np.abs(half[frame] - none[frame])[strong] / np.abs(opaque[frame] - none[frame])[strong]
    assert strong.sum() > 20 and abs(midway.mean() - 0.5) < 0.02  # up to uint8 rounding, clipping


def test_interrupted_build_reruns_to_completion(tmp_path, monkeypatch):
  calls = {"n": 0}
  original = synthetic.render

  def flaky(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 10:
      raise KeyboardInterrupt
    return original(*args, **kwargs)

  monkeypatch.setattr(synthetic, "render", flaky)
  with pytest.raises(KeyboardInterrupt):
    build("synthetic_motion", tmp_path, config="tiny")
  # What a build killed with SIGKILL leaves (an interrupted one in-process cleans up):
  parent = tmp_path / "tfds" / "synthetic_motion" / "tiny"
  killed = parent / "incomplete.X1Y2Z3_1.0.0"
  (killed / "synthetic_motion-train.array_record-00000-of-00001").parent.mkdir(parents=True)
  (killed / "synthetic_motion-train.array_record-00000-of-00001").write_bytes(b"\0" * 1000)
  os.utime(killed, (time.time() - 60, time.time() - 60))
  leftovers = lambda: [n for n in os.listdir(parent) if n.startswith("incomplete.")]  # noqa: E731
  assert leftovers() == [killed.name]
  builder, _ = build("synthetic_motion", tmp_path, config="tiny")
  assert len(read_all(builder, "train")) == 32 and len(read_all(builder, "test")) == 16
  assert leftovers() == []  # the killed build's folder is gone once the rerun finished


def test_workers_build_the_same_examples_and_frames(tmp_path):
  one, _ = prepare_lib.prepare("synthetic_motion", str(tmp_path / "one"), config="tiny",
                               log=quiet, workers=1)
  two, _ = prepare_lib.prepare("synthetic_motion", str(tmp_path / "two"), config="tiny",
                               log=quiet, workers=2)
  for split in ("train", "test"):
    by_key = lambda b: {e["video_id"]: e for e in read_all(b, split)}  # noqa: E731
    a, b = by_key(one), by_key(two)
    assert sorted(a) == sorted(b) and len(a) == (32 if split == "train" else 16)
    for key, example in a.items():
      assert example["label"] == b[key]["label"] and example["num_frames"] == 8
      assert example["frames"] == b[key]["frames"]  # the same JPEG bytes
      assert (example["frames_file"], example["first_frame"]) == (
          b[key]["frames_file"], b[key]["first_frame"])  # in the same frame files


def _copy(name, target):
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.copy(os.path.join(VIDEOS, name), target)


def test_video_folder_class_folders_hold_out_a_deterministic_fraction(tmp_path):
  src = tmp_path / "mine"
  for i in range(3):
    _copy("ucf101_style_BabyCrawling.avi", src / "crawl" / f"c{i}.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", src / "makeup" / "m0.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", src / "makeup" / "m1.avi")
  (src / "makeup" / "notes.txt").write_text("not a video")
  (src / "stray.mp4").write_bytes(b"")
  builder, skipped = build("video_folder", tmp_path, source_dir=str(src), test_fraction=0.34)
  assert builder.info.features["label"].names == ["crawl", "makeup"]  # sorted by name
  train, test = read_all(builder, "train"), read_all(builder, "test")
  # 3 crawl videos: round(3 x 0.34) = 1 held out; 2 makeup videos: at least one each side.
  assert sorted(e["label"] for e in test) == [0, 1] and len(train) == 3
  keys = {e["video_id"].decode() for e in train + test}
  assert keys == {"crawl/c0.avi", "crawl/c1.avi", "crawl/c2.avi", "makeup/m0.avi",
                  "makeup/m1.avi"}
  reasons = sorted(r for _, _, r in skipped)
  assert len(reasons) == 2 and "not a video file" in reasons[0] + reasons[1]
  assert any("not in a class folder" in r for r in reasons)
  # The same split on a rebuild elsewhere; another source under the same name is refused.
  again, _ = build("video_folder", tmp_path / "again", source_dir=str(src), test_fraction=0.34)
  assert {e["video_id"] for e in read_all(again, "test")} == {e["video_id"] for e in test}
  other = tmp_path / "other"
  _copy("ucf101_style_BabyCrawling.avi", other / "crawl" / "x.avi")
  with pytest.raises(ValueError, match=r"was built from .*mine, not .*other: name this build "
                     r"with --config=<another name>"):
    build("video_folder", tmp_path, source_dir=str(other))
  named, _ = build("video_folder", tmp_path, source_dir=str(other), config="other")
  assert named.data_dir.endswith(
      os.path.join("video_folder", "other", video_builder.LAYOUT_VERSION))
  assert [e["video_id"] for e in read_all(named, "train")] == [b"crawl/x.avi"]


def test_video_folder_split_folders_and_list_files(tmp_path):
  split_src = tmp_path / "split"
  _copy("ucf101_style_BabyCrawling.avi", split_src / "train" / "b" / "1.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", split_src / "train" / "a" / "2.avi")
  _copy("ucf101_style_BabyCrawling.avi", split_src / "test" / "b" / "3.avi")
  builder, skipped = build("video_folder", tmp_path / "s", source_dir=str(split_src))
  assert builder.info.features["label"].names == ["a", "b"] and skipped == []
  assert sorted((e["video_id"].decode(), e["label"]) for e in read_all(builder, "train")) == [
      ("train/a/2.avi", 0), ("train/b/1.avi", 1)]
  assert [e["label"] for e in read_all(builder, "test")] == [1]

  lists = tmp_path / "lists"
  _copy("ucf101_style_BabyCrawling.avi", lists / "videos" / "one.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", lists / "videos" / "two.avi")
  (lists / "classes.txt").write_text("zero\none\ntwo\n")
  (lists / "train.txt").write_text("videos/one.avi 2\nvideos/two.avi 0\nvideos/gone.avi 1\n")
  (lists / "test.txt").write_text("videos/one.avi 2\n")
  builder, skipped = build("video_folder", tmp_path / "l", source_dir=str(lists))
  assert builder.info.features["label"].names == ["zero", "one", "two"]
  assert sorted(e["label"] for e in read_all(builder, "train")) == [0, 2]
  assert [(s, p) for s, p, _ in skipped] == [("train", "videos/gone.avi")]
  (lists / "test.txt").write_text("videos/one.avi 2\nvideos/two.avi\n")
  with pytest.raises(video_builder.SplitFileError, match=r"test.txt, line 2: 'videos/two.avi': "
                     r"expected 'relative/path <0-based label>'"):
    build("video_folder", tmp_path / "bad", source_dir=str(lists))
  (lists / "test.txt").write_text("videos/one.avi 3\n")
  with pytest.raises(video_builder.SplitFileError, match=r"test.txt, line 1: .*a label below 3"):
    build("video_folder", tmp_path / "bad2", source_dir=str(lists))


def test_video_folder_config_reads_its_classes_from_the_prepared_metadata(tmp_path):
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  src = tmp_path / "mine"
  for cls in ("jump", "run", "walk"):
    _copy("ucf101_style_BabyCrawling.avi", src / cls / "a.avi")
    _copy("ucf101_style_BabyCrawling.avi", src / cls / "b.avi")
  config = load_config("video_folder")
  config.dataset.source_dir = str(src)
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.update(dict(batch_size=2, eval_batch_size=2))
  run = trainer.Trainer(config, str(tmp_path / "work"))  # prepares on first use
  assert run.class_names == ["jump", "run", "walk"] and config.dataset.num_classes == 3
  assert run.spec["num_classes"] == 3 and len(run.train_source) == 3


BEAM_OPTIONS = "--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2"


def test_beam_pipeline_builds_the_same_examples_frames_and_skips(tmp_path):
  pytest.importorskip("apache_beam")
  src = tmp_path / "mine"
  _copy("ucf101_style_BabyCrawling.avi", src / "crawl" / "c0.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", src / "makeup" / "m0.avi")
  _copy("kinetics_style_flipping_pancake.mkv", src / "makeup" / "m1.mkv")
  cut = open(os.path.join(VIDEOS, "ucf101_style_BabyCrawling.avi"), "rb").read()[:20000]
  (src / "crawl" / "cut.avi").write_bytes(cut)  # decodes a frame or so: skipped
  plain, plain_skips = build("video_folder", tmp_path / "plain", source_dir=str(src),
                             test_fraction=0.34, workers=1)
  beam, beam_skips = build("video_folder", tmp_path / "beam", source_dir=str(src),
                           test_fraction=0.34, beam_options=BEAM_OPTIONS)
  assert beam_skips == plain_skips and len(plain_skips) == 1
  assert plain_skips[0][1].endswith("cut.avi") and "frames" in plain_skips[0][2]
  assert open(os.path.join(beam.data_dir, "skipped.tsv")).read() == open(
      os.path.join(plain.data_dir, "skipped.tsv")).read()
  for split in ("train", "test"):
    by_key = lambda b: {e["video_id"]: e for e in read_all(b, split)}  # noqa: E731
    a, b = by_key(plain), by_key(beam)
    assert sorted(a) == sorted(b) and len(a) >= 1
    for key, example in a.items():
      for field in ("label", "num_frames", "fps", "height", "width", "frames_file",
                    "first_frame"):
        assert example[field] == b[key][field], (key, field)
      assert example["frames"] == b[key]["frames"]  # the same JPEG bytes, every frame
  frame_files = lambda b: sorted(os.listdir(os.path.join(b.data_dir, "frames")))  # noqa: E731
  assert frame_files(beam) == frame_files(plain)  # no temporary file left either
  assert beam.info.splits["train"].num_examples + beam.info.splits["test"].num_examples == 3
  # Only shards, frame files and metadata are left: no work list, no temporary frame file.
  left = sorted(os.listdir(beam.data_dir))
  assert "beam_work" not in left and not any(n.startswith("skipped.") and n != "skipped.tsv"
                                             for n in left)


def test_beam_options_without_beam_is_one_clear_error(tmp_path, monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel
  real_import = builtins.__import__

  def no_beam(name, *args, **kwargs):
    if name.startswith("apache_beam"):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_beam)
  with pytest.raises(ValueError, match=r"--beam_options needs Apache Beam: pip install -r "
                     r"requirements-beam.txt"):
    build("synthetic_motion", tmp_path, config="tiny", beam_options="--runner=DirectRunner")


def test_frame_reader_keeps_at_most_max_open_files_open(tmp_path):
  videos = [[bytes([v, i]) * 10 for i in range(3)] for v in range(5)]
  where = []
  for v, jpegs in enumerate(videos):  # a file per video
    frame_file = frames_lib.FrameFile(str(tmp_path), "train", v)
    where.append((frame_file.relative, frame_file.add(jpegs)))
    frame_file.commit()
  assert len({f for f, _ in where}) == 5 and not any(
      ".tmp-" in n for n in os.listdir(tmp_path / "frames"))
  reader = frames_lib.FrameReader(str(tmp_path), max_open=2)
  for order in (range(5), reversed(range(5)), [0, 4, 0, 2, 0]):
    for v in order:
      file, first = where[v]
      assert reader.read(file, [first + 2, first]) == [videos[v][2], videos[v][0]]
      assert len(reader._readers) <= 2 and file in reader._readers  # pylint: disable=protected-access
  assert list(reader._readers) == [where[2][0], where[0][0]]  # the most recent last  # pylint: disable=protected-access


def test_beam_build_of_a_split_with_no_usable_video_is_one_error(tmp_path):
  pytest.importorskip("apache_beam")
  cut = open(os.path.join(VIDEOS, "ucf101_style_BabyCrawling.avi"), "rb").read()[:20000]
  for name in ("x.avi", "y.avi"):
    (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
    (tmp_path / "src" / "a" / name).write_bytes(cut)
  with pytest.raises(ValueError, match=r"video_folder \(default\): no video of the (train|test) "
                     r"split could be used, so it cannot be written"):
    build("video_folder", tmp_path, source_dir=str(tmp_path / "src"),
          beam_options="--runner=DirectRunner")


def test_every_builder_folder_is_a_dataset_by_name_and_every_config_names_one():
  """Adding a dataset is adding its folder data/<name>/ (and a config): nothing else lists
  it (setup.py installs every folder). prepare's usage names every builder; each loads by
  name; each shipped config's dataset is one."""
  import glob  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from kpsem_jax.data import registry  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folders = sorted(os.path.basename(os.path.dirname(p)) for p in
                   glob.glob(os.path.join(root, "data", "*", "*_dataset_builder.py")))
  assert sorted(registry.builders()) == folders and len(folders) >= 7
  for name in folders:
    assert registry.builder_class(name).name == name
  usage = subprocess.run([sys.executable, "-m", "kpsem_jax.prepare"], cwd=root,
                         capture_output=True, text=True, timeout=120).stderr
  assert usage.splitlines()[-1] == f"DATASET: one of {', '.join(folders)}"
  for path in glob.glob(os.path.join(root, "configs", "*.py")):
    name = os.path.basename(path)[:-3]
    if name == "__init__":
      continue
    assert load_config(name).dataset.name in folders, name


def test_prepare_shows_one_bar_a_split_and_none_of_tfds_lines_unless_verbose(tmp_path, capfd):
  from kpsem_jax.data import prepare  # pylint: disable=import-outside-toplevel
  prepare.prepare("synthetic_motion", str(tmp_path / "quiet"), config="tiny", log=print)
  out, err = capfd.readouterr()
  assert "Downloading and preparing" not in out + err and "incomplete." not in out + err
  assert "train: videos" in err and "test: videos" in err
  assert "synthetic_motion (tiny) in" in out
  prepare.prepare("synthetic_motion", str(tmp_path / "verbose"), config="tiny", log=print,
                  verbose=True)
  out, err = capfd.readouterr()
  assert "Downloading and preparing" in out + err


def test_video_folder_follows_symlinked_folders_and_lists_what_it_cannot_use(tmp_path):
  src, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
  _copy("ucf101_style_BabyCrawling.avi", src / "crawl" / "c0.avi")
  _copy("ucf101_style_BabyCrawling.avi", elsewhere / "c1.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", src / "makeup" / "m0.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", src / "makeup" / "m1.avi")
  os.symlink(elsewhere, src / "crawl" / "more")            # a symlinked subfolder: followed
  os.symlink(src / "crawl", src / "crawl" / "more" / "loop")  # a loop back: skipped, listed
  os.mkfifo(src / "makeup" / "pipe.avi")                   # a FIFO named like a video
  bad = os.path.join(os.fsencode(src / "makeup"), b"caf\xe9.avi")  # Latin-1, not UTF-8
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_ApplyEyeMakeup.avi"), bad)
  builder, skipped = build("video_folder", tmp_path, source_dir=str(src), test_fraction=0.01)
  keys = sorted(e["video_id"].decode() for e in read_all(builder, "train") + read_all(
      builder, "test"))
  assert keys == ["crawl/c0.avi", "crawl/more/c1.avi", "makeup/m0.avi", "makeup/m1.avi"]
  reasons = sorted(r for _, _, r in skipped)
  assert len(reasons) == 3, reasons
  assert any("symlink loop or a second link, skipped" in r for r in reasons)
  assert any(r.endswith("pipe.avi: not a regular file (a FIFO, device or broken link)")
             for r in reasons)
  assert any(r.endswith("caf\\xe9.avi: its name is not valid UTF-8 (rename it)") for r in reasons)
  tsv = open(os.path.join(builder.data_dir, "skipped.tsv"), encoding="utf-8").read()
  assert "caf\\xe9.avi" in tsv and len(tsv.splitlines()) == 4


@pytest.mark.parametrize("layout", ["class folders", "split folders"])
def test_a_class_folder_whose_name_is_not_utf8_is_listed_and_the_rest_builds(tmp_path, layout):
  src = tmp_path / "mine"
  top = src / "train" if layout == "split folders" else src
  _copy("ucf101_style_BabyCrawling.avi", top / "crawl" / "c0.avi")
  _copy("ucf101_style_ApplyEyeMakeup.avi", top / "makeup" / "m0.avi")
  bad = os.path.join(os.fsencode(top), b"d\xe9tour")  # Latin-1, not UTF-8
  os.makedirs(bad)
  shutil.copy(os.path.join(VIDEOS, "ucf101_style_ApplyEyeMakeup.avi"), os.path.join(bad, b"x.avi"))
  builder, skipped = build("video_folder", tmp_path, source_dir=str(src), test_fraction=0)
  assert builder.info.features["label"].names == ["crawl", "makeup"]
  keys = sorted(e["video_id"].decode() for e in read_all(builder, "train"))
  prefix = "train/" if layout == "split folders" else ""
  assert keys == [prefix + "crawl/c0.avi", prefix + "makeup/m0.avi"]
  reasons = [r for _, _, r in skipped]
  assert len(reasons) == 1 and reasons[0].endswith(
      "d\\xe9tour: a class folder whose name is not valid UTF-8, left out with its videos "
      "(rename it)"), reasons
