"""mini_kinetics: the 200-class Kinetics subset of Xie et al. (S3D), 80k train / 5k val.

Source layout (``--source_dir``): the downloaded Kinetics clips anywhere below it
(``kpsem_jax.data.kinetics``: ``{youtube_id}_{start:06d}_{end:06d}.mp4`` or ``{youtube_id}.mp4``).
Lists (in ``--splits_dir``, default the source folder): ``classes.txt`` (200 names,
alphabetical = labels), ``kinetics_200_train.csv`` and ``kinetics_200_val.csv``
(``label,youtube_id,time_start,time_end,split``). Clips that were never downloaded (common
for Kinetics) are counted and reported, not fatal.
"""

import tensorflow_datasets as tfds

from kpsem_jax.data import kinetics
from kpsem_jax.data import video_builder
from kpsem_jax.data.video_builder import LAYOUT_VERSION


class Builder(kinetics.KineticsBuilder):
  """Mini-Kinetics-200 (train / validation)."""

  VERSION = tfds.core.Version(LAYOUT_VERSION)
  RELEASE_NOTES = video_builder.RELEASE_NOTES

  def class_names(self):
    return [name for _, name in video_builder.read_lines(self.split_file("classes.txt"))]

  def split_csvs(self):
    return {"train": self.split_file("kinetics_200_train.csv"),
            "validation": self.split_file("kinetics_200_val.csv")}
