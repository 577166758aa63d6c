"""JAX options that the entry points set, once, before JAX starts its backends.

``train.py``, every ``python -m kpsem_jax.*`` command, the benchmarks and the tests call
:func:`configure` first, as big_vision's ``train.py`` sets its options; importing
``kpsem_jax`` changes nothing. A program that uses the library without it gets JAX's
defaults, except where a default is known to crash: see :func:`require_ynn_fusions_off`.
"""

import os

import jax

# jaxlib 0.10's XLA:CPU hands element-wise and reduction fusions to its experimental YNNPACK
# backend, which segfaulted (slinky ``can_fuse``, in a transpose) on the second call of
# KPSEM's compiled gradient with one AReSE set (G=1) on an AVX2 machine; plain XLA fusions
# are as fast on these models (docs/development.md).
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def configure() -> None:
  """The project's JAX options: no YNNPACK fusions on XLA:CPU, classic threefry.

  Classic (non-partitionable) threefry makes XLA:CPU compile random initialisers several
  times faster; only the random draws differ. Raises RuntimeError when JAX's backends have
  already started and XLA_FLAGS lacks the fusion flag (it would no longer take effect).
  """
  if not ynn_fusions_off():
    if _backends_started():
      raise RuntimeError(
          "kpsem_jax.jax_options.configure() ran after JAX started its backends; call it "
          f"first, or set XLA_FLAGS={YNN_FUSION_FLAG}= in the environment")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_FUSION_FLAG}=".strip()
  jax.config.update("jax_threefry_partitionable", False)


def ynn_fusions_off() -> bool:
  """Whether ``XLA_FLAGS`` chooses the YNNPACK fusion type (``configure`` sets it empty)."""
  return YNN_FUSION_FLAG.lstrip("-") in os.environ.get("XLA_FLAGS", "")


def require_ynn_fusions_off(what: str) -> None:
  """Raises instead of letting XLA:CPU crash on ``what`` where the fusions are on."""
  if jax.default_backend() == "cpu" and not ynn_fusions_off():
    raise RuntimeError(
        f"{what} can crash XLA:CPU (jaxlib 0.10, YNNPACK fusions) unless XLA_FLAGS contains "
        f"{YNN_FUSION_FLAG}= ; call kpsem_jax.jax_options.configure() before JAX starts, "
        "or set the flag in the environment")


def cpu_kernels_allowed() -> bool:
  """Whether the environment allows :mod:`kpsem_jax.models.cpu_kernels` (``KPSEM_JAX_ONEDNN=0``
  turns them off: every ``auto`` convolution then resolves to pure XLA). The environment
  variables that change behaviour are read here; the build's own (compiler, oneDNN root,
  cache folder) in ``cpu_kernels.build``."""
  return os.environ.get("KPSEM_JAX_ONEDNN", "1") != "0"


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False
