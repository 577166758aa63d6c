"""The one way the trainer, evaluation and the experiments get a config's dataset: found
where it was prepared, built first when ``auto_prepare`` allows (process 0 builds, every
process waits), its version checked, its splits opened.

    class_names, train_source, eval_source = datasets.open_dataset(config.dataset)
"""

import os
from typing import Any, List, Tuple

from jax.experimental import multihost_utils
import ml_collections

from kpsem_jax import process_zero
from kpsem_jax.data import prepare as prepare_lib
from kpsem_jax.data import video_source
from kpsem_jax.host import usable_cores


class DatasetError(ValueError):
  """A dataset section that names no buildable dataset, a split it lacks, a class count it
  does not have, or a build that failed; the message says which."""


def open_dataset(dataset: ml_collections.ConfigDict) -> Tuple[List[str], Any, Any]:
  """``(class_names, train_source, eval_source)`` of ``dataset`` (a config's ``dataset``
  section). Sets ``dataset.num_classes`` from the prepared metadata when it is 0. Raises
  :class:`video_source.DataNotPreparedError` (not prepared, ``auto_prepare`` off) or
  :class:`DatasetError`."""
  d = dataset
  data_dir = os.path.expanduser(d.data_dir)
  if d.name not in prepare_lib.datasets():
    raise DatasetError(f"config.dataset.name={d.name!r} is not a dataset this project "
                       f"builds; choose one of {', '.join(prepare_lib.datasets())}")
  try:
    found = video_source.dataset_dir(data_dir, d.name, d.config)
    if d.auto_prepare and video_source.older_version(found, prepare_lib.builder_version(d.name)):
      raise video_source.DataNotPreparedError(f"{found} is an older version")  # built anew below
  except video_source.DataNotPreparedError:
    if not d.auto_prepare:
      raise
    _prepare(d, data_dir)
  try:
    train, names = video_source.load_source(data_dir, d.name, d.config, d.train_split)
    evals, _ = video_source.load_source(data_dir, d.name, d.config, d.eval_split)
  except ValueError as e:  # a split the prepared data does not have
    raise DatasetError(f"config.dataset: {e}") from None
  if not d.num_classes:  # from the prepared metadata (video_folder)
    d.num_classes = len(names)
  if len(names) != d.num_classes:
    raise DatasetError(f"config.dataset.num_classes={d.num_classes} but {d.name} has "
                       f"{len(names)} classes")
  return names, train, evals


def _prepare(d: ml_collections.ConfigDict, data_dir: str) -> None:
  """Builds ``d`` on process 0, with every core; the other processes wait for it."""
  if process_zero.is_main():
    print(f"preparing {d.name} ({d.config}) in {data_dir}")
    try:
      prepare_lib.prepare(d.name, data_dir, source_dir=d.get("source_dir") or None,
                          config=d.config, workers=usable_cores())
    except prepare_lib.PrepareError as e:
      raise DatasetError(str(e)) from None
  multihost_utils.sync_global_devices("dataset prepared")
