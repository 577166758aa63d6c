"""mini_kinetics: the 200-class Kinetics subset of Xie et al. (S3D), 80k train / 5k val.

Source layout (``--source_dir``): the downloaded Kinetics clips anywhere below it, named
``{youtube_id}_{start:06d}_{end:06d}.mp4`` or ``{youtube_id}.mp4`` (.mkv/.webm/.avi too).
Lists (in ``--splits_dir``, default the source folder): ``classes.txt`` (200 names,
alphabetical = labels), ``kinetics_200_train.csv`` and ``kinetics_200_val.csv``
(``label,youtube_id,time_start,time_end,split``). Clips that were never downloaded (common
for Kinetics) are counted and reported, not fatal.
"""

import csv
import os
import re

import tensorflow_datasets as tfds

from data import common

EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")


class Builder(common.VideoDatasetBuilder):
  """Mini-Kinetics-200 (train / validation)."""

  VERSION = tfds.core.Version(common.LAYOUT_VERSION)
  RELEASE_NOTES = common.RELEASE_NOTES

  def _classes(self):
    return [name for _, name in common.read_lines(self.split_file("classes.txt"))]

  def _info(self):
    names = self._classes() if self.source_dir or self.splits_dir else ["unknown"]
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=common.features(names))

  def _clips_by_id(self):
    """``{youtube_id: path}`` for every clip below the source folder."""
    pattern = re.compile(r"^(.{11})(_\d{6}_\d{6})?$")
    clips = {}
    for directory, _, files in os.walk(self.require_source()):
      for name in files:
        stem, ext = os.path.splitext(name)
        m = pattern.match(stem)
        if m and ext.lower() in EXTENSIONS:
          clips.setdefault(m.group(1), os.path.join(directory, name))
    return clips

  def _split_generators(self, dl_manager):
    del dl_manager
    labels = {name: i for i, name in enumerate(self._classes())}
    clips = self._clips_by_id()
    splits = {}
    for split, name in (("train", "kinetics_200_train.csv"), ("validation", "kinetics_200_val.csv")):
      path = self.split_file(name)
      items = []
      with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM is dropped
        for number, row in enumerate(csv.reader(f), 1):
          if number == 1 and row and row[0] == "label":
            continue
          if len(row) < 4 or row[0] not in labels or len(row[1]) != 11:
            raise common.SplitFileError(path, number, ",".join(row),
                                        "'label,youtube_id,time_start,time_end[,split]' with a "
                                        "label of classes.txt")
          clip = clips.get(row[1])
          if clip is None:
            self.skipped.add(split, row[1], f"listed in {path} but not downloaded")
          else:
            items.append(common.Item(row[1], clip, labels[row[0]]))
      splits[split] = items
    return self.split_generators(splits)
