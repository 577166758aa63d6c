"""``python -m kpsem_jax.experiments``: the suite's command line
(:func:`kpsem_jax.experiments.runner.main`)."""

from kpsem_jax import cli
from kpsem_jax.experiments import runner

cli.run(runner.main, runner.define_flags)
