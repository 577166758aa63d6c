"""something_something_v1: 20BN Something-Something v1 (174 classes) from frame folders.

Source layout (``--source_dir``): one folder of JPEG frames per video, ``<id>/00001.jpg``
(optionally under ``20bn-something-something-v1/``). Label files (``--splits_dir``, default
the source folder): ``something-something-v1-labels.csv`` (one name a line; some contain
commas), ``-train.csv`` and ``-validation.csv`` (``id;Label``). Labels follow the line order
of the labels file (as mmaction2; TSM numbers them alphabetically). Frames are kept at their
size unless the short side exceeds ``--short_side``. Train with horizontal flips off: several
classes are defined by left/right.
"""

import os

import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION

PREFIX = "something-something-v1"


class Builder(video_builder.VideoDatasetBuilder):
  """Something-Something v1 (train / validation)."""

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES

  def _classes(self):
    return [name for _, name in video_builder.read_lines(self.split_file(f"{PREFIX}-labels.csv"))]

  def _info(self):
    names = self._classes() if self.source_dir or self.splits_dir else ["unknown"]
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=video_builder.features(names))

  def _split_generators(self, dl_manager):
    del dl_manager
    labels = {name: i for i, name in enumerate(self._classes())}
    root = os.path.join(self.require_source(), "20bn-something-something-v1")
    root = root if os.path.isdir(root) else self.require_source()
    splits = {}
    for split, name in (("train", "train"), ("validation", "validation")):
      path = self.split_file(f"{PREFIX}-{name}.csv")
      rows = []
      for number, line in video_builder.read_lines(path):
        video_id, _, label = line.partition(";")
        if not video_id.strip().isdigit() or label not in labels:
          raise video_builder.SplitFileError(path, number, line,
                                             "'<id>;<label of the labels file>'")
        rows.append((video_id.strip(), os.path.join(root, video_id.strip()), labels[label]))
      items = []
      for key, folder, label in rows:
        if os.path.isdir(folder):
          items.append(video_builder.Item(key, folder, label, is_frame_folder=True))
        else:
          self.skipped.add(split, folder, f"listed in {path} but not found")
      splits[split] = items
    return self.split_generators(splits)
