"""The configs: ml-collections files with ``get_config(arg)``, loaded by path
(``train.py --config=configs/<name>.py``, ``kpsem_jax.config_base.load_config``).
Installed as ``kpsem_jax.configs`` (``setup.py``) so the shipped ones travel with the package."""
