"""A prepared dataset, found and opened: the newest build of a dataset's config under a
``data_dir`` (:func:`dataset_dir`; a missing or old one is a :class:`DataNotPreparedError`
naming the prepare command), its index and shards checked, and a split opened as a
random-access :class:`VideoSource` of :class:`Video` s, each reading and decoding only the
frames asked for (``kpsem_jax.data.frames``).
"""

import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from kpsem_jax.data import frames as frames_lib
from kpsem_jax.data import video_builder


class DataNotPreparedError(FileNotFoundError):
  """The prepared dataset is missing; the message holds the command that builds it."""


def _version_key(version: str) -> Tuple[int, ...]:
  return tuple(int(p) for p in version.split(".") if p.isdigit())


def older_version(folder: str, version: str) -> bool:
  """Whether a prepared version ``folder`` (``.../<name>/<config>/<version>``) predates
  ``version``."""
  return _version_key(os.path.basename(folder)) < _version_key(version)


def dataset_dir(data_dir: str, name: str, config: Optional[str] = None) -> str:
  """The newest prepared version folder of ``name``/``config`` under ``data_dir``; a
  dataset prepared only in the old whole-video layout (before version
  ``video_builder.LAYOUT_VERSION``) is not read: the error says to rebuild it."""
  root = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(root):
    versions = sorted((v for v in os.listdir(root)
                       if os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
                      key=_version_key)
  current = [v for v in versions if _version_key(v) >= _version_key(video_builder.LAYOUT_VERSION)]
  if not current:
    what = (f"is prepared in {os.path.join(root, versions[-1])} in the old layout that reads "
            f"whole videos (version {versions[-1]}); rebuild it" if versions else
            f"is not prepared in {data_dir}. Build it")
    raise DataNotPreparedError(
        f"the {name} dataset ({config or 'default'}) {what} "
        f"with:\n  {_prepare_command(data_dir, name, config)}")
  return os.path.join(root, current[-1])


def _prepare_command(data_dir: str, name: str, config: Optional[str]) -> str:
  from kpsem_jax.data import prepare  # pylint: disable=import-outside-toplevel
  return prepare.prepare_command(data_dir, name, config)


def load_source(data_dir: str, name: str, config: Optional[str], split: str
                ) -> Tuple["VideoSource", List[str]]:
  """``(random-access source of videos, class names)`` of a prepared split."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from google.protobuf import json_format  # pylint: disable=import-outside-toplevel
  root = dataset_dir(data_dir, name, config)

  def damaged(path, reason):
    return DataNotPreparedError(
        f"the {name} dataset ({config or 'default'}) in {root} is damaged: {path}: {reason}; "
        f"remove {root} and rebuild it with:\n  {_prepare_command(data_dir, name, config)}")
  try:
    builder = tfds.builder_from_directory(root)
  except (json_format.ParseError, ValueError, KeyError, OSError) as e:
    raise damaged(os.path.join(root, "dataset_info.json"),
                  f"cannot be read ({' '.join(str(e).split())[:200]})") from None
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
  # Each shard holds the records the build wrote (its index read, no record decoded).
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  info = builder.info.splits[split]
  for path, expected in zip(info.filepaths, info.shard_lengths):
    try:
      reader = array_record_module.ArrayRecordReader(str(path))
      found = reader.num_records()
      reader.close()
    except (RuntimeError, ValueError, OSError) as e:
      raise damaged(str(path), f"cannot be read ({' '.join(str(e).split())[:200]})") from None
    if found != expected:
      raise damaged(str(path), f"holds {found} records where the build wrote {expected}")
  return (VideoSource(builder.as_data_source(split), root),
          list(builder.info.features["label"].names))


class Video:
  """One video of a source: ``index`` (its id within the split), ``label``, ``num_frames``,
  and ``frames(indices)``, its frames at those indices, each ``(H, W, 3)`` uint8.

  ``read(indices)`` gives the stored frames (JPEG bytes, or arrays); ``frames`` decodes each
  as it is consumed, so a frame is resized while it is still in the cache (19% faster per
  clip than decoding all first), and a frame listed twice (a looped short video) once.
  """

  def __init__(self, index: int, label: int, num_frames: int,
               read: Callable[[Sequence[int]], Sequence]):
    self.index, self.label, self.num_frames, self._read = index, label, num_frames, read

  def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
    indices = [int(i) for i in indices]
    unique = sorted(set(indices))
    stored = dict(zip(unique, self._read(unique)))
    repeated = {i for i in unique if indices.count(i) > 1}
    decoded: Dict[int, np.ndarray] = {}
    for i in indices:
      frame = decoded.get(i)
      if frame is None:
        item = stored[i]
        frame = frames_lib.decode_jpeg(item) if isinstance(item, bytes) else item
        if i in repeated:
          decoded[i] = frame
      yield frame

  @classmethod
  def from_frames(cls, frames: np.ndarray, label: int = 0, index: int = 0) -> "Video":
    """A video already decoded, ``(N, H, W, 3)`` (``predict``'s files, tests)."""
    return cls(index, label, len(frames), lambda indices: [frames[i] for i in indices])


class VideoSource:
  """A prepared split: ``source[i]`` is a :class:`Video` whose ``frames`` reads and decodes
  only the frames asked for (``kpsem_jax.data.frames``); ``bytes_read`` counts the JPEG bytes read
  in this process."""

  def __init__(self, records, root: str):
    self.records = records  # the TFDS data source of the split's per-video examples
    self.reader = frames_lib.FrameReader(root)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index: int) -> Video:
    record = self.records[int(index)]
    frames_file = record["frames_file"]
    frames_file = frames_file.decode() if isinstance(frames_file, bytes) else str(frames_file)
    first = int(record["first_frame"])
    return Video(int(index), int(record["label"]), int(record["num_frames"]),
                 lambda indices: self.reader.read(frames_file, [first + i for i in indices]))

  @property
  def bytes_read(self) -> int:
    return self.reader.bytes_read

  def __repr__(self):
    return f"VideoSource({self.records!r})"
