"""hmdb51: HMDB51 from its official layout and the ``testTrainMulti_7030_splits`` files.

Source layout (``--source_dir``): ``<class>/<video>.avi`` for the 51 classes (the inner
``<class>.rar`` archives of ``hmdb51_org.rar``, extracted), and the split files folder
``testTrainMulti_7030_splits/`` (from ``test_train_splits.rar``), or ``--splits_dir``.
Configs ``split1``..``split3``. Each split file ``<class>_test_split<N>.txt`` has lines
``<video>.avi <tag>``: tag 1 = train, 2 = test, 0 = unused. Class names come from the split
file names; labels are their alphabetical order (``brush_hair`` = 0 ... ``wave`` = 50).
"""

import os
import re

import tensorflow_datasets as tfds

from data import common

SPLITS_DIR = "testTrainMulti_7030_splits"
TAGS = {"1": "train", "2": "test"}


class Builder(common.VideoDatasetBuilder):
  """HMDB51 (51 classes, 3 train/test splits)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"split{n}") for n in (1, 2, 3)]

  def _split_number(self) -> int:
    return int(self.builder_config.name[-1])

  def _split_files(self):
    """``{class name: split file path}`` for this config, sorted by class name."""
    folder = self.splits_dir or self.require_source(SPLITS_DIR)
    pattern = re.compile(rf"^(.+)_test_split{self._split_number()}\.txt$")
    files = {m.group(1): os.path.join(folder, name)
             for name in os.listdir(folder) for m in [pattern.match(name)] if m}
    if not files:
      raise FileNotFoundError(f"hmdb51: no *_test_split{self._split_number()}.txt in {folder}")
    return dict(sorted(files.items()))

  def _info(self):
    names = list(self._split_files()) if self.source_dir or self.splits_dir else None
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=common.features(names or ["unknown"]))

  def _split_generators(self, dl_manager):
    del dl_manager
    index = common.FileIndex(self.require_source())
    rows = {"train": [], "test": []}
    for label, (name, path) in enumerate(self._split_files().items()):
      for number, line in common.read_lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or not parts[0].endswith(".avi"):
          raise common.SplitFileError(path, number, line, "'<video>.avi <0|1|2>'")
        if parts[1] in TAGS:
          rows[TAGS[parts[1]]].append((f"{name}/{parts[0]}", f"{name}/{parts[0]}", label))
    return self.split_generators({split: self.items_or_missing(split, r, index, "the split files")
                                  for split, r in rows.items()})
