"""A split built by an Apache Beam pipeline (``prepare --beam_options=...``).

TFDS runs the pipeline: a builder's split generator returns :class:`EncodeSplit`, TFDS
applies it to its ``beam.Pipeline`` and writes the examples it yields with its own Beam
writer (array_record shards, as the plain build's). The videos are cut into the same groups
as in a plain build (:func:`video_builder.groups`); a Beam worker encodes a group with the
same :func:`video_builder.encode_group`, writing its frame file (under a temporary name,
renamed when whole, so a retried bundle leaves no half file). The examples and frame files
equal the plain build's.

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
from typing import List, Sequence, Tuple

import apache_beam as beam

from kpsem_jax.data import video_builder

WORK_DIR = "beam_work"


class _EncodeGroup(beam.DoFn):
  """Group index -> its stored examples; skipped videos go to the ``skipped`` output."""

  def __init__(self, root: str, split: str, encode, min_frames: int):
    super().__init__()
    self.root, self.split, self.encode, self.min_frames = root, split, encode, min_frames
    self.groups = None

  def setup(self):
    with open(os.path.join(self.root, WORK_DIR, f"{self.split}.pkl"), "rb") as f:
      self.groups = video_builder.groups(pickle.load(f))

  def process(self, group: int):
    examples, skips = video_builder.encode_group(self.groups[group], self.root, self.split,
                                          self.encode, self.min_frames)
    for skip in skips:
      yield beam.pvalue.TaggedOutput("skipped", skip)
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
    self.groups = len(video_builder.groups(keyed))
    os.makedirs(os.path.join(root, WORK_DIR), exist_ok=True)
    with open(os.path.join(root, WORK_DIR, f"{split}.pkl"), "wb") as f:
      pickle.dump(list(keyed), f)

  def expand(self, pipeline):
    results = (pipeline
               | "Groups" >> beam.Create(range(self.groups))
               | "Spread" >> beam.Reshuffle()
               | "Encode" >> beam.ParDo(_EncodeGroup(self.root, self.split, self.encode,
                                                     self.min_frames)
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
