"""TFDS dataset builders (no TensorFlow): one folder per dataset, ``<name>_dataset_builder.py``.

Installed as ``kpsem_jax.builders`` (``setup.py``); :mod:`kpsem_jax.data.registry` finds
them by name. Every builder writes array_record shards whose examples hold JPEG-encoded
frames; see :mod:`kpsem_jax.data.video_builder` for the feature layout.
"""
