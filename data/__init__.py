"""TFDS dataset builders (no TensorFlow): one folder per dataset, ``<name>_dataset_builder.py``.

Every builder writes array_record shards whose examples hold JPEG-encoded frames; see
:mod:`data.common` for the feature layout.
"""

import importlib
import os

# The storage layout of every video builder (data.frames: one record per frame); datasets
# prepared in an older layout are rebuilt, not read.
LAYOUT_VERSION = "2.0.0"

# dataset name -> module path of its builder (imported on demand: each pulls in TFDS).
BUILDERS = {
    "synthetic_motion": "data.synthetic_motion.synthetic_motion_dataset_builder",
    "hmdb51": "data.hmdb51.hmdb51_dataset_builder",
    "ucf101": "data.ucf101.ucf101_dataset_builder",
    "mini_kinetics": "data.mini_kinetics.mini_kinetics_dataset_builder",
    "kinetics400": "data.kinetics400.kinetics400_dataset_builder",
    "video_folder": "data.video_folder.video_folder_dataset_builder",
    "something_something_v1":
        "data.something_something_v1.something_something_v1_dataset_builder",
}


def builder_class(name: str):
  """The TFDS builder class of dataset ``name``."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(BUILDERS))}")
  return importlib.import_module(BUILDERS[name]).Builder


def usable_cores() -> int:
  """The cores this process may use (its CPU affinity): ``prepare --workers`` and the
  loader's ``num_workers=-1`` default to it."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def printable(path: str) -> str:
  """``path`` as valid UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogate
  escapes) shown as ``\\xff``; a valid path is returned unchanged."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")
