"""The datasets by name: one builder folder each in the repository's ``data/``, installed
as ``kpsem_jax.builders`` (``setup.py``).

A folder ``data/<name>/`` holding ``<name>_dataset_builder.py`` is dataset ``<name>``;
nothing else lists them, so adding a dataset is adding its folder (and a config file).
"""

import importlib
import os

BUILDERS_PACKAGE = "kpsem_jax.builders"


def builders() -> dict:
  """Dataset name -> module path of its builder (imported on demand: each pulls in TFDS)."""
  here = os.path.dirname(importlib.util.find_spec(BUILDERS_PACKAGE).origin)
  return {name: f"{BUILDERS_PACKAGE}.{name}.{name}_dataset_builder"
          for name in sorted(os.listdir(here))
          if os.path.isfile(os.path.join(here, name, f"{name}_dataset_builder.py"))}


def builder_class(name: str):
  """The TFDS builder class of dataset ``name``."""
  known = builders()
  if name not in known:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(known)}")
  return importlib.import_module(known[name]).Builder
