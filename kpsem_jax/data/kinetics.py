"""What the Kinetics builders share: clips found by YouTube id, annotation CSV rows.

Downloaded Kinetics clips are named ``{youtube_id}_{start:06d}_{end:06d}.mp4`` or
``{youtube_id}.mp4`` (.mkv/.webm/.avi too), anywhere below the source folder (flat, or in
``<split>/<label>/`` folders as common download scripts leave them). Annotation CSVs hold
``label,youtube_id,time_start,time_end[,split[,is_cc]]`` with a header line; labels with
commas are quoted. A listed clip that was never downloaded (common: videos disappear from
YouTube) is counted in ``skipped.tsv``, not fatal.
"""

import csv
import os
import re
from typing import Dict, List, Mapping, Optional

import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder

EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
_NAME = re.compile(r"^(.{11})(_\d{6}_\d{6})?$")


def clips_by_id(root: str) -> Dict[str, str]:
  """``{youtube_id: path}`` for every clip below ``root``."""
  clips = {}
  for directory, _, files in os.walk(root):
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      m = _NAME.match(stem)
      if m and ext.lower() in EXTENSIONS:
        clips.setdefault(m.group(1), os.path.join(directory, name))
  return clips


def read_rows(path: str) -> List[tuple]:
  """``(line number, label, youtube_id)`` of an annotation CSV (a BOM and the header line
  dropped); a malformed line is a ``SplitFileError`` naming file and line."""
  rows = []
  with open(path, newline="", encoding="utf-8-sig") as f:
    for number, row in enumerate(csv.reader(f), 1):
      if number == 1 and row and row[0] == "label":
        continue
      if not row or not any(cell.strip() for cell in row):
        continue
      if len(row) < 4 or not row[0] or len(row[1]) != 11:
        raise video_builder.SplitFileError(path, number, ",".join(row),
                                    "'label,youtube_id,time_start,time_end[,split]'")
      rows.append((number, row[0], row[1]))
  return rows


class KineticsBuilder(video_builder.VideoDatasetBuilder):
  """A Kinetics builder: subclasses say where the class names and each split's CSV are."""

  def split_csvs(self) -> Mapping[str, str]:
    """``{split: annotation CSV path}``."""
    raise NotImplementedError

  def class_names(self) -> List[str]:
    raise NotImplementedError

  def _info(self):
    names = self.class_names() if self.source_dir or self.splits_dir else ["unknown"]
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                        features=video_builder.features(names))

  def _split_generators(self, dl_manager):
    del dl_manager
    labels = {name: i for i, name in enumerate(self.class_names())}
    clips = clips_by_id(self.require_source())
    splits = {}
    for split, path in self.split_csvs().items():
      items = []
      for number, label, youtube_id in read_rows(path):
        if label not in labels:
          raise video_builder.SplitFileError(path, number, f"{label},{youtube_id},...",
                                      f"a label of the {len(labels)} classes")
        clip = clips.get(youtube_id)
        if clip is None:
          self.skipped.add(split, youtube_id, f"listed in {path} but not downloaded")
        else:
          items.append(video_builder.Item(youtube_id, clip, labels[label]))
      splits[split] = items
    return self.split_generators(splits)


def first_existing(builder: video_builder.VideoDatasetBuilder, names) -> Optional[str]:
  """The first of ``names`` found in ``--splits_dir`` (else the source folder), or None."""
  root = builder.splits_dir or builder.source_dir
  for name in names:
    if root and os.path.isfile(os.path.join(root, name)):
      return os.path.join(root, name)
  return None
