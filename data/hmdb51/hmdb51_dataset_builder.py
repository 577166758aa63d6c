"""hmdb51: HMDB51 from its official layout and the ``testTrainMulti_7030_splits`` files.

Source layout (``--source_dir``): ``<class>/<video>.avi`` for the 51 classes, or the
archives as distributed (``hmdb51_org.rar`` and/or its 51 inner ``<class>.rar``), which are
extracted with ``unar`` (Debian's ``unar`` package) into ``<data_dir>/downloads/extracted/``;
and the split files folder ``testTrainMulti_7030_splits/`` (from ``test_train_splits.rar``),
or ``--splits_dir``.
Configs ``split1``..``split3``. Each split file ``<class>_test_split<N>.txt`` has lines
``<video>.avi <tag>``: tag 1 = train, 2 = test, 0 = unused. Class names come from the split
file names; labels are their alphabetical order (``brush_hair`` = 0 ... ``wave`` = 50).
"""

import os
import re
import shutil
import subprocess

import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION

SPLITS_DIR = "testTrainMulti_7030_splits"
TAGS = {"1": "train", "2": "test"}


class Builder(video_builder.VideoDatasetBuilder):
  """HMDB51 (51 classes, 3 train/test splits)."""

  SPLIT_CONFIGS = True  # split1, split2, split3: prepare --split=N

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES
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
                                 features=video_builder.features(names or ["unknown"]))

  def _video_root(self, class_names) -> str:
    """The folder holding ``<class>/*.avi``: the source, or its extracted .rar archives."""
    root = self.require_source()
    if any(os.path.isdir(os.path.join(root, name)) for name in class_names):
      return root
    rars = sorted(f for f in os.listdir(root) if f.lower().endswith(".rar"))
    if not rars:
      return root  # every listed video will be reported missing
    unar = shutil.which("unar")
    if unar is None:
      raise FileNotFoundError(
          f"hmdb51: {root} holds .rar archives ({', '.join(rars[:3])}, ...) and no class "
          "folders, and no extractor was found: install one (apt-get install unar) or "
          "extract them so that <class>/<video>.avi sit in the source folder")
    out = os.path.join(self._data_dir_root, "downloads", "extracted", "hmdb51")
    os.makedirs(out, exist_ok=True)
    pending = [os.path.join(root, f) for f in rars]
    while pending:  # the outer archive yields the inner <class>.rar files
      archive = pending.pop(0)
      done = os.path.join(out, f".{os.path.basename(archive)}.done")
      if not os.path.exists(done):
        tmp = os.path.join(out, f".tmp-{os.path.basename(archive)}")
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run([unar, "-q", "-f", "-D", "-o", tmp, archive],
                                capture_output=True, text=True, check=False)
        if result.returncode:
          raise ValueError(f"hmdb51: extracting {archive} failed: {result.stderr.strip()}")
        for name in os.listdir(tmp):
          shutil.move(os.path.join(tmp, name), os.path.join(out, name))
        shutil.rmtree(tmp)
        open(done, "w").close()
      pending += [os.path.join(out, f) for f in sorted(os.listdir(out))
                  if f.lower().endswith(".rar") and os.path.join(out, f) not in pending
                  and not os.path.exists(os.path.join(out, f".{f}.done"))]
    return out

  def _split_generators(self, dl_manager):
    del dl_manager
    index = video_builder.FileIndex(self._video_root(list(self._split_files())))
    rows = {"train": [], "test": []}
    for label, (name, path) in enumerate(self._split_files().items()):
      for number, line in video_builder.read_lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or not parts[0].endswith(".avi"):
          raise video_builder.SplitFileError(path, number, line, "'<video>.avi <0|1|2>'")
        if parts[1] in TAGS:
          rows[TAGS[parts[1]]].append((f"{name}/{parts[0]}", f"{name}/{parts[0]}", label))
    return self.split_generators({split: self.items_or_missing(split, r, index, "the split files")
                                  for split, r in rows.items()})
