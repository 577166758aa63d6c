"""Which packages the distribution holds (the metadata is in pyproject.toml).

``kpsem_jax`` and everything under it, plus the repository's ``data/`` (one dataset
builder folder each) and ``configs/`` installed inside it as ``kpsem_jax.builders`` and
``kpsem_jax.configs``: no generic top-level name (``data``, ``configs``) lands in
site-packages, and a new builder folder needs no entry here.
"""

import setuptools

setuptools.setup(
    packages=(setuptools.find_packages(include=["kpsem_jax", "kpsem_jax.*"])
              + ["kpsem_jax.builders", "kpsem_jax.configs"]
              + [f"kpsem_jax.builders.{p}" for p in setuptools.find_packages("data")]),
    package_dir={"kpsem_jax.builders": "data", "kpsem_jax.configs": "configs"},
    package_data={"kpsem_jax.models.cpu_kernels": ["*.cc"], "kpsem_jax.data": ["*.cc"]},
)
