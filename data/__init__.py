"""TFDS dataset builders (no TensorFlow): one folder per dataset, ``<name>_dataset_builder.py``.

Every builder writes array_record shards whose examples hold JPEG-encoded frames; see
:mod:`data.common` for the feature layout.
"""

import importlib
import os

# The storage layout of every video builder (data.frames: one record per frame); datasets
# prepared in an older layout are rebuilt, not read.
LAYOUT_VERSION = "2.0.0"



def builders() -> dict:
  """Dataset name -> module path of its builder, for every folder ``data/<name>/`` holding
  ``<name>_dataset_builder.py`` (imported on demand: each pulls in TFDS). Adding a dataset
  is adding its folder; nothing else lists them."""
  here = os.path.dirname(os.path.abspath(__file__))
  return {name: f"data.{name}.{name}_dataset_builder" for name in sorted(os.listdir(here))
          if os.path.isfile(os.path.join(here, name, f"{name}_dataset_builder.py"))}



def builder_class(name: str):
  """The TFDS builder class of dataset ``name``."""
  known = builders()
  if name not in known:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(known)}")
  return importlib.import_module(known[name]).Builder


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
