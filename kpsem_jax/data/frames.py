"""Frame storage: every frame one array_record record, so a clip reads only its own frames.

A prepared dataset keeps one small TFDS example per video (label, frame count, where its
frames are) and the frames themselves beside the TFDS shards::

    <dataset>/<config>/<version>/frames/<split>-<group>.array_record   one JPEG per record

A video's frames are consecutive records of one file, from ``first_frame``; a file holds a
group of up to 16 consecutive videos of the split (``kpsem_jax.data.video_builder.videos_per_file``), the
work of one ``prepare`` worker or Beam worker. Reading frame ``i`` of a video is one record read
(records are written one per chunk, ``group_size:1``, and read without read-ahead), so a
training clip of 16 frames reads those 16 JPEGs and no more.

No TensorFlow and no TFDS here: the worker processes of ``prepare`` and of the loader
import this module alone.
"""

import collections
import io
import os
import uuid
from typing import List, Sequence

from array_record.python import array_record_module
import numpy as np
from PIL import Image
import simplejpeg

FRAMES_DIR = "frames"
# One record per chunk: random access reads exactly the record asked for. Uncompressed:
# JPEGs do not shrink, and zstd cost 6x the write time (0.085 vs 0.013 ms a frame).
WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = "readahead_buffer_size:0"
JPEG_QUALITY = 90


def encode_jpeg(frame: np.ndarray) -> bytes:
  """``(H, W, 3)`` uint8 RGB -> JPEG bytes (Pillow, quality 90, 4:2:0)."""
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG bytes -> ``(H, W, 3)`` uint8 RGB (libjpeg-turbo through simplejpeg: the same
  pixels as Pillow's decoder, in about 60% of its time; docs/datasets.md)."""
  return simplejpeg.decode_jpeg(data, colorspace="RGB")


class FrameFile:
  """One frame file, ``root/frames/<split>-<group>.array_record``, written under a temporary
  name and renamed once whole (a retried or killed writer leaves no half file).

  ``add`` appends a video's JPEGs and returns the index of its first frame; ``commit``
  renames the file into place (or removes it when it holds no frame); ``abort`` removes it.
  """

  def __init__(self, root: str, split: str, group: int):
    self.relative = f"{FRAMES_DIR}/{split}-{group:05d}.array_record"
    self.path = os.path.join(root, self.relative)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._temporary = f"{self.path}.tmp-{uuid.uuid4().hex}"
    self._writer = array_record_module.ArrayRecordWriter(self._temporary, WRITER_OPTIONS)
    self.records = 0

  def add(self, jpegs: Sequence[bytes]) -> int:
    first = self.records
    for jpeg in jpegs:
      self._writer.write(jpeg)
    self.records += len(jpegs)
    return first

  def commit(self) -> None:
    self._writer.close()
    if self.records:
      os.replace(self._temporary, self.path)
    else:
      os.remove(self._temporary)

  def abort(self) -> None:
    try:
      self._writer.close()
    finally:
      if os.path.exists(self._temporary):
        os.remove(self._temporary)


class DamagedDataError(OSError):
  """A prepared frame file that is missing or cannot be read; the message names it and
  says to rebuild the dataset."""


class FrameReader:
  """Reads frames by ``(file, indices)`` from the files under ``root``; picklable (each
  process opens its own readers on first use) and counts the bytes it returns. At most
  ``max_open`` files are open at once (the least recently read is closed first): a
  Kinetics-size build has thousands of frame files, more than a process may hold open."""

  def __init__(self, root: str, max_open: int = 64):
    self.root = root
    self.max_open = max_open
    self._readers: "collections.OrderedDict[str, array_record_module.ArrayRecordReader]" = (
        collections.OrderedDict())
    self.bytes_read = 0

  def __getstate__(self):
    return {"root": self.root, "max_open": self.max_open}

  def __setstate__(self, state):
    self.__init__(state["root"], state["max_open"])

  def __repr__(self):
    return f"FrameReader({self.root!r})"

  def read(self, relative_file: str, indices: Sequence[int]) -> List[bytes]:
    reader = self._readers.get(relative_file)
    if reader is None:
      path = os.path.join(self.root, relative_file)
      if not os.path.isfile(path):
        raise DamagedDataError(f"{path}: frame file missing; rebuild the dataset with "
                               "python -m kpsem_jax.prepare")
      try:
        reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
      except (RuntimeError, ValueError) as e:
        raise DamagedDataError(f"{path}: cannot be opened ({e}); rebuild the dataset with "
                               "python -m kpsem_jax.prepare") from None
      self._readers[relative_file] = reader
      if len(self._readers) > self.max_open:
        self._readers.popitem(last=False)[1].close()
    else:
      self._readers.move_to_end(relative_file)
    try:
      records = reader.read([int(i) for i in indices])
    except (RuntimeError, ValueError) as e:
      raise DamagedDataError(f"{os.path.join(self.root, relative_file)}: cannot read frames "
                             f"{list(indices)} ({e}); rebuild the dataset with python -m "
                             "kpsem_jax.prepare") from None
    self.bytes_read += sum(len(r) for r in records)
    return records
