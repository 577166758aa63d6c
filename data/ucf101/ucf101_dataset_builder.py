"""ucf101: UCF101 from ``UCF-101/<Class>/v_*.avi`` and the official ``ucfTrainTestlist``.

Source layout (``--source_dir``): ``UCF-101/`` (from ``UCF101.rar``; the class folders may
also sit directly in the source folder) and ``ucfTrainTestlist/`` (from
``UCF101TrainTestSplits-RecognitionTask.zip``), or ``--splits_dir`` pointing at it.
Configs ``split1``..``split3``. Labels are ``classInd.txt``'s ids minus one (classInd order,
not ``sorted()``); test labels come from the class folder through classInd. Paths match
case-insensitively (``HandstandPushups/v_HandStandPushups_*``).
"""

import os

import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION

LISTS = "ucfTrainTestlist"


class Builder(video_builder.VideoDatasetBuilder):
  """UCF101 (101 classes, 3 train/test splits)."""

  SPLIT_CONFIGS = True  # split1, split2, split3: prepare --split=N

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"split{n}") for n in (1, 2, 3)]

  def _list(self, name):
    return self.split_file(name) if self.splits_dir else self.require_source(LISTS, name)

  def _classes(self):
    path = self._list("classInd.txt")
    classes = {}
    for number, line in video_builder.read_lines(path):
      parts = line.split()
      if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
        raise video_builder.SplitFileError(path, number, line, f"'{len(classes) + 1} <ClassName>'")
      classes[parts[1]] = int(parts[0]) - 1
    return classes

  def _info(self):
    names = list(self._classes()) if self.source_dir or self.splits_dir else ["unknown"]
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=video_builder.features(names))

  def _split_generators(self, dl_manager):
    del dl_manager
    classes = self._classes()
    by_lower = {name.lower(): label for name, label in classes.items()}
    root = os.path.join(self.require_source(), "UCF-101")
    index = video_builder.FileIndex(root if os.path.isdir(root) else self.require_source())
    n = self.builder_config.name[-1]
    splits = {}
    for split, name in (("train", f"trainlist0{n}.txt"), ("test", f"testlist0{n}.txt")):
      path = self._list(name)
      rows = []
      for number, line in video_builder.read_lines(path):
        parts = line.split()
        folder = parts[0].split("/")[0].lower() if parts else ""
        if split == "train":
          ok = len(parts) == 2 and parts[1].isdigit() and 1 <= int(parts[1]) <= len(classes)
          label = int(parts[1]) - 1 if ok else None
          expected = "'<Class>/<video>.avi <1-based class id>'"
        else:
          ok = len(parts) == 1 and folder in by_lower
          label = by_lower.get(folder)
          expected = "'<Class>/<video>.avi' with a class of classInd.txt"
        if not ok or "/" not in parts[0]:
          raise video_builder.SplitFileError(path, number, line, expected)
        rows.append((parts[0], parts[0], label))
      splits[split] = self.items_or_missing(split, rows, index, path)
    return self.split_generators(splits)
