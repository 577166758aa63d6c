"""The CPU-scale experiment suite (``python -m kpsem_jax.experiments``): its variants, runs,
statistics and reports."""
