"""kinetics400: Kinetics-400 (Kay et al. 2017), the pretraining set of the released MFNet.

Source layout (``--source_dir``): the downloaded clips anywhere below it
(``kpsem_jax.data.kinetics``: ``{youtube_id}_{start:06d}_{end:06d}.mp4`` or ``{youtube_id}.mp4``,
flat or in ``<split>/<label>/`` folders). Annotations (in ``--splits_dir``, default the
source folder), as distributed: ``train.csv`` and ``validate.csv``
(``label,youtube_id,time_start,time_end,split``), or the same under the names
``kinetics-400_train.csv`` / ``kinetics-400_val.csv`` (with an ``is_cc`` column). Labels:
the class names of the CSVs found, sorted (the 400 names, alphabetical, as in the released
models). Splits: train / validation; a split whose CSV is absent is left out. Clips that
were never downloaded are counted and reported, not fatal.
"""

import tensorflow_datasets as tfds

from kpsem_jax.data import kinetics
from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION

CSV_NAMES = {"train": ("train.csv", "kinetics-400_train.csv", "kinetics_400_train.csv"),
             "validation": ("validate.csv", "kinetics-400_val.csv", "kinetics_400_val.csv",
                            "val.csv")}


class Builder(kinetics.KineticsBuilder):
  """Kinetics-400 (train / validation)."""

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES

  def split_csvs(self):
    found = {split: kinetics.first_existing(self, names) for split, names in CSV_NAMES.items()}
    found = {split: path for split, path in found.items() if path}
    if not found:
      where = self.splits_dir or self.source_dir
      raise FileNotFoundError(
          f"{self.name}: no annotation CSV in {where} (expected {CSV_NAMES['train'][0]} and/or "
          f"{CSV_NAMES['validation'][0]}, or {CSV_NAMES['train'][1]} / "
          f"{CSV_NAMES['validation'][1]}); pass --splits_dir=<folder holding them>")
    return found

  def class_names(self):
    names = set()
    for path in self.split_csvs().values():
      names.update(label for _, label, _ in kinetics.read_rows(path))
    return sorted(names)
