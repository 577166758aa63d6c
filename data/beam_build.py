"""A split built by an Apache Beam pipeline (``prepare --beam_options=...``).

TFDS runs the pipeline: a builder's split generator returns :class:`EncodeSplit`, TFDS
applies it to its ``beam.Pipeline`` and writes the examples it yields with its own Beam
writer (array_record shards, the same as the plain build's). Here the videos are cut into
groups; each group is decoded and encoded by one worker, which writes the group's frames
to one file ``frames/<split>-<group>.array_record`` (written under a temporary name and
renamed, so a retried bundle leaves no half file) and yields the group's examples with
``frames_file`` and ``first_frame``. The examples, labels and frame bytes equal the plain
build's; only the frames' file names and offsets differ.

The list of videos travels as a file in the build folder (``beam_work/<split>.pkl``), not
inside the pipeline graph, and skipped videos come back as ``skipped.<split>.tsv`` there;
:func:`collect` reads and removes both once the build is done. Every worker must see the
build folder at the same path: a local disk for ``DirectRunner``, a shared file system
(NFS and the like) on a cluster. ``apache-beam`` is an optional extra
(``requirements-beam.txt``); only this module imports it.
"""

import csv
import os
import pickle
import shutil
import uuid
from typing import List, Sequence, Tuple

import apache_beam as beam
from array_record.python import array_record_module

from data import common
from data import frames as frames_lib

WORK_DIR = "beam_work"
MAX_VIDEOS_PER_FILE = 64


def videos_per_file(count: int) -> int:
  """Videos of a group (and of a frame file): up to 64, fewer for small splits so they
  still spread over about 64 groups."""
  return min(MAX_VIDEOS_PER_FILE, max(1, -(-count // 64)))


class _EncodeGroup(beam.DoFn):
  """Group index -> its stored examples; skipped videos go to the ``skipped`` output."""

  def __init__(self, root: str, split: str, encode, min_frames: int, per_file: int):
    super().__init__()
    self.root, self.split, self.encode = root, split, encode
    self.min_frames, self.per_file = min_frames, per_file
    self.keyed = None

  def setup(self):
    with open(os.path.join(self.root, WORK_DIR, f"{self.split}.pkl"), "rb") as f:
      self.keyed = pickle.load(f)

  def process(self, group: int):
    start = group * self.per_file
    relative = f"{frames_lib.FRAMES_DIR}/{self.split}-{group:05d}.array_record"
    path = os.path.join(self.root, relative)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    writer = array_record_module.ArrayRecordWriter(temporary, frames_lib.WRITER_OPTIONS)
    examples, records = [], 0
    try:
      for position in range(start, min(start + self.per_file, len(self.keyed))):
        key, item = self.keyed[position]
        result = common.checked_example(item, self.encode, self.min_frames)
        if isinstance(result, str):
          yield beam.pvalue.TaggedOutput("skipped", (position, common.item_path(item), result))
          continue
        jpegs = result.pop("frames")
        for jpeg in jpegs:
          writer.write(jpeg)
        examples.append((key, dict(result, frames_file=relative, first_frame=records)))
        records += len(jpegs)
    finally:
      writer.close()
    if records:
      os.replace(temporary, path)
    else:
      os.remove(temporary)
    yield from examples


def _write_skips(entries: List[Tuple[int, str, str]], path: str) -> None:
  with open(path, "w", encoding="utf-8", newline="") as f:
    csv.writer(f, delimiter="\t").writerows((p, r) for _, p, r in sorted(entries))


class EncodeSplit(beam.PTransform):
  """Pipeline root -> ``(key, example)`` of the split's usable videos.

  Args:
    root: the folder being built (the builder's ``data_dir`` during the build).
    split: the split's name.
    keyed: ``(key, item)`` per video, in the split's order.
    encode: ``item -> example`` with ``frames`` (JPEG bytes); picklable.
    min_frames: videos with fewer decoded frames are skipped.
  """

  def __init__(self, root: str, split: str, keyed: Sequence[Tuple[str, object]], encode,
               min_frames: int):
    super().__init__()
    self.root, self.split, self.encode, self.min_frames = root, split, encode, min_frames
    self.count = len(keyed)
    os.makedirs(os.path.join(root, WORK_DIR), exist_ok=True)
    os.makedirs(os.path.join(root, frames_lib.FRAMES_DIR), exist_ok=True)
    with open(os.path.join(root, WORK_DIR, f"{split}.pkl"), "wb") as f:
      pickle.dump(list(keyed), f)

  def expand(self, pipeline):
    per_file = videos_per_file(self.count)
    groups = -(-self.count // per_file)
    results = (pipeline
               | "Groups" >> beam.Create(range(groups))
               | "Spread" >> beam.Reshuffle()
               | "Encode" >> beam.ParDo(_EncodeGroup(self.root, self.split, self.encode,
                                                     self.min_frames, per_file)
                                        ).with_outputs("skipped", main="examples"))
    _ = (results.skipped
         | "CollectSkips" >> beam.combiners.ToList()
         | "WriteSkips" >> beam.Map(_write_skips, os.path.join(self.root,
                                                               f"skipped.{self.split}.tsv")))
    return results.examples


def collect(data_dir: str, splits: Sequence[str]) -> List[Tuple[str, str, str]]:
  """``(split, file, reason)`` of every video the pipeline skipped, in each split's order;
  removes the pipeline's work files from the finished build."""
  entries = []
  for split in splits:
    path = os.path.join(data_dir, f"skipped.{split}.tsv")
    if os.path.exists(path):
      with open(path, encoding="utf-8", newline="") as f:
        entries.extend((split, p, r) for p, r in csv.reader(f, delimiter="\t"))
      os.remove(path)
  shutil.rmtree(os.path.join(data_dir, WORK_DIR), ignore_errors=True)
  return entries
