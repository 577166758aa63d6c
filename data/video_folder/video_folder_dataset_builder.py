"""video_folder: your own videos, a folder per class or MMAction2-style list files.

``--source_dir`` is laid out in one of three ways (checked in this order):

1. List files: ``train.txt`` (and ``test.txt``), lines ``relative/path label`` with a
   0-based integer label (MMAction2's ``VideoDataset``); class names from ``classes.txt``
   (one a line, line i = label i) when present, else ``class_0`` ... by the largest label.
2. Split folders: ``train/<class>/<video>`` and ``test/<class>/<video>``; classes are the
   train split's class folders, sorted by name.
3. Class folders: ``<class>/<video>``, classes sorted by name; a deterministic
   ``--test_fraction`` of each class (default 0.2) is held out for ``test``: the class's
   videos ordered by the SHA-256 of their relative path, the first ``round(n * fraction)``
   (at least one of a class of two or more).

Videos are files with a video extension (``EXTENSIONS``); anything else in a class folder
is listed in ``skipped.tsv`` as not a video. Each build remembers its source folder: a
second source under the same ``--config`` name is refused (choose another name).
"""

import hashlib
import os
from typing import Dict, List, Tuple

import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION
from kpsem_jax.host import printable

EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv",
              ".flv", ".3gp", ".ogv")
DEFAULT_TEST_FRACTION = 0.2


class Builder(video_builder.VideoDatasetBuilder):
  """Videos of your own (train / test)."""

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES
  ANY_CONFIG_NAME = True  # prepare --config=NAME names the build (default "default")

  def __init__(self, *, test_fraction: float = DEFAULT_TEST_FRACTION, **kwargs):
    if not 0 <= test_fraction < 1:
      raise ValueError(f"--test_fraction={test_fraction}: choose a fraction in [0, 1)")
    self.test_fraction = test_fraction
    super().__init__(**kwargs)

  # ---- the three layouts -------------------------------------------------------------
  def layout(self) -> str:
    root = self.require_source()
    if os.path.isfile(os.path.join(root, "train.txt")):
      return "lists"
    if os.path.isdir(os.path.join(root, "train")):
      return "split folders"
    return "class folders"

  def class_names(self) -> List[str]:
    root = self.require_source()
    layout = self.layout()
    if layout == "lists":
      named = os.path.join(root, "classes.txt")
      if os.path.isfile(named):
        return [name for _, name in video_builder.read_lines(named)]
      labels = [label for split in self._list_files()
                for _, _, label in self._list_rows(split)]
      return [f"class_{i}" for i in range(max(labels) + 1)]
    folder = os.path.join(root, "train") if layout == "split folders" else root
    names = sorted(n for n in self._class_folders(folder) if printable(n) == n)
    if not names:
      raise FileNotFoundError(f"{self.name}: {folder} holds no class folder (docs/datasets.md "
                              "gives the layouts of video_folder)")
    return names

  @staticmethod
  def _class_folders(folder: str) -> List[str]:
    """The names of ``folder``'s subfolders (symlinked ones included), sorted."""
    return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))

  def _skip_unreadable_class_names(self, folder: str, split: str) -> None:
    """Lists in ``skipped.tsv`` each class folder whose name is not valid UTF-8 (no class
    label can hold it); its videos are left out with it."""
    for name in self._class_folders(folder):
      shown = printable(os.path.join(folder, name))
      if printable(name) != name:
        self.skipped.add(split, shown, f"{shown}: a class folder whose name is not valid "
                         "UTF-8, left out with its videos (rename it)")

  def _list_files(self) -> Dict[str, str]:
    root = self.require_source()
    return {split: os.path.join(root, f"{split}.txt") for split in ("train", "test")
            if os.path.isfile(os.path.join(root, f"{split}.txt"))}

  def _list_rows(self, split: str) -> List[Tuple[int, str, int]]:
    path = self._list_files()[split]
    rows = []
    for number, line in video_builder.read_lines(path):
      parts = line.rsplit(maxsplit=1)
      if len(parts) != 2 or not parts[1].isdigit():
        raise video_builder.SplitFileError(path, number, line, "'relative/path <0-based label>'")
      rows.append((number, parts[0], int(parts[1])))
    return rows

  def _videos_in(self, folder: str, split: str) -> List[str]:
    """Video files below ``folder`` (sorted), symlinked folders followed (each real folder
    once: a loop or a second link is skipped); everything else is logged as skipped: other
    files, names that are not valid UTF-8, FIFOs and devices named like videos."""
    videos, seen = [], set()
    for directory, subdirs, files in os.walk(folder, followlinks=True):
      real = os.path.realpath(directory)
      if real in seen:
        self.skipped.add(split, directory, f"{printable(directory)}: a folder "
                         f"already listed ({real}): a symlink loop or a second link, skipped")
        subdirs[:] = []
        continue
      seen.add(real)
      subdirs.sort()
      for name in sorted(files):
        path = os.path.join(directory, name)
        shown = printable(path)
        if shown != path:
          self.skipped.add(split, shown, f"{shown}: its name is not valid UTF-8 (rename it)")
        elif name.lower().endswith(EXTENSIONS):
          if os.path.isfile(path):
            videos.append(path)
          else:
            self.skipped.add(split, path, f"{path}: not a regular file (a FIFO, device or "
                             "broken link)")
        elif not name.startswith("."):
          self.skipped.add(split, path, f"{path}: not a video file (extensions: "
                           f"{', '.join(EXTENSIONS)})")
    return videos

  def _held_out(self, videos: List[str]) -> List[str]:
    """The test videos of one class: a deterministic ``test_fraction`` of them."""
    if not videos or self.test_fraction == 0:
      return []
    root = self.require_source()
    ranked = sorted(videos, key=lambda p: hashlib.sha256(
        os.path.relpath(p, root).replace(os.sep, "/").encode()).hexdigest())
    count = int(round(len(ranked) * self.test_fraction))
    if len(ranked) >= 2:
      count = min(max(count, 1), len(ranked) - 1)
    return ranked[:count]

  def _items(self) -> Dict[str, List[video_builder.Item]]:
    root = self.require_source()
    layout = self.layout()
    names = self.class_names()
    labels = {name: i for i, name in enumerate(names)}
    items: Dict[str, List[video_builder.Item]] = {"train": [], "test": []}

    def item(path, label):
      key = os.path.relpath(path, root).replace(os.sep, "/")
      return video_builder.Item(key, path, label)

    if layout == "lists":
      index = video_builder.FileIndex(root)
      for split, path in self._list_files().items():
        rows = []
        for number, relative, label in self._list_rows(split):
          if label >= len(names):
            raise video_builder.SplitFileError(path, number, f"{relative} {label}",
                                        f"a label below {len(names)} (classes.txt)")
          rows.append((relative, relative, label))
        items[split] = self.items_or_missing(split, rows, index, path)
    elif layout == "split folders":
      for split in ("train", "test"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
          continue
        self._skip_unreadable_class_names(folder, split)
        for name in self._class_folders(folder):
          if printable(name) != name:
            continue
          if name not in labels:
            raise ValueError(f"{os.path.join(folder, name)}: class {name!r} is not among the "
                             f"train split's classes ({os.path.join(root, 'train')})")
          items[split] += [item(p, labels[name])
                           for p in self._videos_in(os.path.join(folder, name), split)]
    else:
      for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and not name.startswith("."):
          shown = printable(path)
          self.skipped.add("train", shown, f"{shown}: not in a class folder (<class>/<video>)")
      self._skip_unreadable_class_names(root, "train")
      for name in names:
        videos = self._videos_in(os.path.join(root, name), "train")
        test = set(self._held_out(videos))
        items["train"] += [item(p, labels[name]) for p in videos if p not in test]
        items["test"] += [item(p, labels[name]) for p in videos if p in test]
    return {split: v for split, v in items.items() if v or split == "train"}

  # ---- which source a build is of ----------------------------------------------------
  def check_same_source(self) -> None:
    """A finished build of another source folder under this name is an error, not reused."""
    path = os.path.join(self.data_dir, "source.txt")
    if not self.source_dir or not os.path.isfile(path):
      return
    with open(path, encoding="utf-8") as f:
      recorded = f.read().strip()
    if recorded != os.path.abspath(self.source_dir):
      raise ValueError(f"{self.name} ({self.builder_config.name}) in {self.data_dir} was "
                       f"built from {recorded}, not {os.path.abspath(self.source_dir)}: name "
                       "this build with --config=<another name> (and config.dataset.config "
                       "in training)")

  def record_source(self) -> None:
    """Writes ``source.txt`` beside a finished build (the folder it was built from)."""
    path = os.path.join(self.data_dir, "source.txt")
    if self.source_dir and not os.path.exists(path):
      with open(path, "w", encoding="utf-8") as f:
        f.write(os.path.abspath(self.source_dir) + "\n")

  # ---- TFDS --------------------------------------------------------------------------
  def _info(self):
    names = self.class_names() if self.source_dir else ["unknown"]
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=video_builder.features(names))

  def _split_generators(self, dl_manager):
    del dl_manager
    return self.split_generators(self._items())
