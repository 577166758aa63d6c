"""TFDS dataset builders (no TensorFlow): one folder per dataset, ``<name>_dataset_builder.py``.

Every builder writes array_record shards whose examples hold JPEG-encoded frames; see
:mod:`data.common` for the feature layout.
"""

import importlib

# dataset name -> module path of its builder (imported on demand: each pulls in TFDS).
BUILDERS = {
    "synthetic_motion": "data.synthetic_motion.synthetic_motion_dataset_builder",
    "hmdb51": "data.hmdb51.hmdb51_dataset_builder",
    "ucf101": "data.ucf101.ucf101_dataset_builder",
    "mini_kinetics": "data.mini_kinetics.mini_kinetics_dataset_builder",
    "something_something_v1":
        "data.something_something_v1.something_something_v1_dataset_builder",
}


def builder_class(name: str):
  """The TFDS builder class of dataset ``name``."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(BUILDERS))}")
  return importlib.import_module(BUILDERS[name]).Builder
