"""What every video builder shares: the features, frame storage, split-file errors, skips.

A stored example (one per video) holds ``label``, ``video_id``, ``fps``, the source's
``height``/``width``, ``num_frames`` (frames actually decoded, not the header's count) and
where its frames are: ``frames_file`` and ``first_frame`` (:mod:`kpsem_jax.data.frames`: one JPEG
record per frame, short side resized once at build time). Builders produce examples with
``frames`` (the JPEG bytes); :func:`encode_group` moves them to the frame files.
"""

import functools
import multiprocessing
import os
from typing import Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tqdm import tqdm

from kpsem_jax.data import frames as frames_lib
from kpsem_jax.data import video as video_lib

# The storage layout of every video builder (frames.py: one record per frame); datasets
# prepared in an older layout are rebuilt, not read.
LAYOUT_VERSION = "2.0.0"

RELEASE_NOTES = {"1.0.0": "Frames inside each video's example.",
                 "2.0.0": "Frames one record each in frames/<split>-*.array_record; an example "
                          "holds frames_file and first_frame."}


class SplitFileError(ValueError):
  """A malformed line in a split/label file; the message names file and line."""

  def __init__(self, path: str, line_number: int, line: str, expected: str):
    super().__init__(f"{path}, line {line_number}: {line.rstrip()!r}: expected {expected}")


class Item(NamedTuple):
  """One video to encode: a file, or a folder of frame images."""
  key: str
  path: str
  label: int
  is_frame_folder: bool = False


def features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "frames_file": tfds.features.Tensor(shape=(), dtype=np.object_),
      "first_frame": tfds.features.Scalar(dtype=np.int64),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "video_id": tfds.features.Tensor(shape=(), dtype=np.object_),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
  })


def encode_frames(frames: np.ndarray) -> List[bytes]:
  return [frames_lib.encode_jpeg(f) for f in frames]


def video_example(item: Item, short_side: Optional[int]) -> dict:
  """Decodes ``item`` and returns its TFDS example; raises VideoError if unusable."""
  if item.is_frame_folder:
    names = sorted(n for n in os.listdir(item.path)
                   if n.lower().endswith((".jpg", ".jpeg", ".png")))
    if not names:
      raise video_lib.VideoError(f"{item.path}: frame folder holds no images")
    jpegs, size = [], None
    for name in names:
      path = os.path.join(item.path, name)
      try:
        image = Image.open(path).convert("RGB")
      except OSError as e:
        raise video_lib.VideoError(f"{path}: unreadable image ({e})") from None
      size = size or image.size
      target = video_lib.resized_size(*image.size, short_side)
      if short_side and min(image.size) > short_side:
        image = image.resize(target, Image.BILINEAR)
      jpegs.append(frames_lib.encode_jpeg(np.asarray(image)))
    return dict(frames=jpegs, label=item.label, video_id=item.key, fps=12.0,
                width=size[0], height=size[1], num_frames=len(jpegs))
  frames, info = video_lib.read_video(item.path, short_side=short_side, with_info=True,
                                      threads=False)  # the processes are the parallelism
  video_lib.check_complete(item.path, len(frames), info["expected_frames"])
  return dict(frames=encode_frames(frames), label=item.label, video_id=item.key,
              fps=info["fps"], width=info["width"], height=info["height"],
              num_frames=len(frames))


# Fewer frames than this and a 16-frame clip (MFNet's) would repeat each frame more than
# twice: such a video is skipped (prepare --min_frames).
MIN_FRAMES = 8


class SkipLog:
  """Files left out of a build, with reasons; written next to the dataset by ``prepare``."""

  def __init__(self):
    self.entries: List[Tuple[str, str, str]] = []  # (split, file, reason)

  def add(self, split: str, path: str, reason: str):
    self.entries.append((split, path, reason))

  def count(self, split: Optional[str] = None) -> int:
    return sum(1 for s, _, _ in self.entries if split is None or s == split)


def item_path(item) -> str:
  """What a skip names for ``item``: its file, or the item itself (a generated video)."""
  return getattr(item, "path", str(item))


def checked_example(item, encode, min_frames: int = 1) -> Union[dict, str]:
  """``encode(item)``, or the reason ``item`` is skipped: an unreadable, truncated or empty
  video (``VideoError``), or one of fewer than ``min_frames`` frames."""
  try:
    example = encode(item)
  except video_lib.VideoError as e:
    return str(e)
  if example["num_frames"] < min_frames:
    return (f"{item_path(item)}: {example['num_frames']} frames, fewer than "
            f"--min_frames={min_frames}")
  return example


def encoded(items: Sequence, encode, workers: int = 1) -> Iterator:
  """``encode(item)`` for each item, in order: in this process (``workers <= 1``) or in
  ``workers`` worker processes (each video decoded and encoded by one of them; the results
  come back in the items' order, so the build is the same for any ``workers``)."""
  if workers <= 1 or len(items) <= 1:
    yield from map(encode, items)
    return
  # forkserver: one clean server process (no JAX or TFDS threads forked) that has imported
  # this module, forking each worker ready to run; the next split's pool reuses it.
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([__name__])
  with context.Pool(min(workers, len(items))) as pool:
    yield from pool.imap(encode, items, chunksize=1)


MAX_VIDEOS_PER_FILE = 16


def videos_per_file(count: int) -> int:
  """Videos in a group (one worker's task, one frame file) of a split of ``count``: up to
  16, fewer for a split under 1,024 videos, so that every split makes about 64 groups or
  more and the workers finish together."""
  return min(MAX_VIDEOS_PER_FILE, max(1, -(-count // 64)))


def groups(keyed: Sequence[Tuple[str, object]]) -> List[Tuple[int, List[Tuple[int, str, object]]]]:
  """``(group index, [(position, key, item), ...])``: the split's videos in consecutive
  groups of :func:`videos_per_file`; the same for any number of workers or runner."""
  size = videos_per_file(len(keyed))
  numbered = [(position, key, item) for position, (key, item) in enumerate(keyed)]
  return [(g, numbered[start:start + size]) for g, start in enumerate(range(0, len(keyed), size))]


def encode_group(group: Tuple[int, Sequence[Tuple[int, str, object]]], root: str, split: str,
                 encode, min_frames: int = 1):
  """Encodes one group (a ``prepare`` or Beam worker's task): writes its frames to
  ``root/frames/<split>-<group>.array_record`` and returns ``(examples, skips)``:
  ``(key, stored example)`` per usable video and ``(position, file, reason)`` per skipped
  one (:func:`checked_example`)."""
  index, members = group
  frame_file = frames_lib.FrameFile(root, split, index)
  examples, skips = [], []
  try:
    for position, key, item in members:
      result = checked_example(item, encode, min_frames)
      if isinstance(result, str):
        skips.append((position, item_path(item), result))
        continue
      first = frame_file.add(result.pop("frames"))
      examples.append((key, dict(result, frames_file=frame_file.relative, first_frame=first)))
  except BaseException:
    frame_file.abort()
    raise
  frame_file.commit()
  return examples, skips


def generate(keyed: Sequence[Tuple[str, object]], root: str, split: str, encode,
             skipped: "SkipLog", min_frames: int = 1, workers: int = 1
             ) -> Iterator[Tuple[str, dict]]:
  """Stored examples, ``(key, example)`` for each usable ``(key, item)``, in the split's
  order: groups of videos encoded in ``workers`` processes, each writing its group's frame
  file under ``root``; skipped items are logged."""
  task = functools.partial(encode_group, root=root, split=split, encode=encode,
                           min_frames=min_frames)
  # One short bar a split (TFDS's own bars name the build's temporary files; prepare shows
  # them with --verbose).
  total = len(keyed) if hasattr(keyed, "__len__") else None
  with tqdm(total=total, desc=f"{split}: videos", unit=" videos", leave=False,
            dynamic_ncols=True) as bar:
    for examples, skips in encoded(groups(keyed), task, workers):
      for _, path, reason in skips:
        skipped.add(split, path, reason)
      bar.update(len(examples) + len(skips))
      yield from examples


def read_lines(path: str) -> List[Tuple[int, str]]:
  """``(line number, text)`` of the non-blank lines; a UTF-8 BOM, CRLF and trailing spaces
  stripped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: split file not found")
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]


class VideoDatasetBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the video builders: array_record shards, a source folder, a skip log.

  Args (beyond TFDS's ``data_dir``, ``config``):
    source_dir: what the dataset's authors distribute, laid out as the builder documents.
    short_side: frames are stored with this short side (None: original size).
    min_frames: videos with fewer frames are skipped and logged.
    workers: processes that decode and encode videos (without Beam).
    beam: build through the Apache Beam pipeline of ``download_and_prepare``'s
      ``DownloadConfig(beam_options=...)`` instead (``prepare --beam_options``).
  """

  # One config, "default", unless a builder has several (splits): the data then sits in
  # <data_dir>/<name>/default/<version>, where configs' dataset.config="default" finds it.
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default")]
  # What `python -m kpsem_jax.prepare` needs to know of a builder: whether it builds from a
  # --source_dir, and whether its configs are the official splits "split1".. (--split=N).
  NEEDS_SOURCE = True
  SPLIT_CONFIGS = False

  def __init__(self, *, source_dir: Optional[str] = None, short_side: Optional[int] = 256,
               splits_dir: Optional[str] = None, min_frames: int = MIN_FRAMES,
               workers: int = 1, beam: bool = False, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    self.beam = beam
    self.min_frames = min_frames
    self.workers = workers
    self.source_dir = source_dir
    self.splits_dir = splits_dir
    self.short_side = short_side
    self.skipped = SkipLog()
    self.empty_splits: List[str] = []
    super().__init__(**kwargs)

  def require_source(self, *names: str) -> str:
    """``source_dir`` joined with ``names``; a clear error when it is missing."""
    if not self.source_dir:
      raise ValueError(f"{self.name}: --source_dir is required to build this dataset")
    path = os.path.join(self.source_dir, *names)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{self.name}: {path} not found (docs/datasets.md gives the "
                              f"layout of {self.name})")
    return path

  def split_file(self, *names: str) -> str:
    """A split/label file: under ``splits_dir`` if given, else under ``source_dir``."""
    if self.splits_dir:
      path = os.path.join(self.splits_dir, *names)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{self.name}: {path} not found")
      return path
    return self.require_source(*names)

  def items_or_missing(self, split: str, listed: Iterable[Tuple[str, str, int]],
                       index: "FileIndex", listing: str) -> List[Item]:
    """Items for ``(key, relative path, label)`` rows; rows whose file is absent are logged."""
    items = []
    for key, relative, label in listed:
      path = index.find(relative)
      if path is None:
        self.skipped.add(split, relative, f"listed in {listing} but not found")
      else:
        items.append(Item(key, path, label))
    return items

  def split_generators(self, items: Mapping[str, Sequence[Item]]):
    """TFDS split generators for ``{split: items}``; a split with no video is left out
    (reported by ``prepare``), and a dataset with none at all is an error."""
    kept = {split: self._generate_examples(v, split) for split, v in items.items() if v}
    self.empty_splits = [split for split, v in items.items() if not v]
    if not kept:
      raise FileNotFoundError(
          f"{self.name}: none of the videos the split files list was found under "
          f"{self.source_dir} ({self.skipped.count()} missing); check --source_dir")
    return kept

  def _generate_examples(self, items: Sequence[Item], split: str):
    """Stored examples for ``items`` (a video that cannot be decoded is skipped and logged)."""
    return self.examples(split, [(item.key, item) for item in items],
                         functools.partial(video_example, short_side=self.short_side))

  def examples(self, split: str, keyed: Sequence[Tuple[str, object]], encode):
    """The split's stored examples, ``encode(item)`` for each ``(key, item)`` and its frames
    written to the frame files of the folder TFDS is building (so an interrupted build
    leaves them in its ``incomplete.*`` folder): a generator (``workers`` processes) or,
    when the build runs on Apache Beam, the pipeline's transform (:mod:`kpsem_jax.data.beam_build`).
    Both store the same examples and frame files."""
    if self.beam:
      from kpsem_jax.data import beam_build  # pylint: disable=import-outside-toplevel
      return beam_build.EncodeSplit(self.data_dir, split, keyed, encode, self.min_frames)
    return generate(keyed, self.data_dir, split, encode, self.skipped, self.min_frames,
                    self.workers)


class FileIndex:
  """Files under ``root`` by relative path, matched case-insensitively.

  Copies of UCF101 differ in case (``HandstandPushups/v_HandStandPushups_*``); file names
  with ``[ ] ( ) ! # & + ; ~ @`` (HMDB51) are matched literally, never globbed.
  """

  def __init__(self, root: str):
    self.root = root
    self.paths = {}
    for directory, _, files in os.walk(root):
      for name in files:
        full = os.path.join(directory, name)
        self.paths.setdefault(os.path.relpath(full, root).replace(os.sep, "/").lower(), full)

  def find(self, relative: str) -> Optional[str]:
    return self.paths.get(relative.replace("\\", "/").lower())
