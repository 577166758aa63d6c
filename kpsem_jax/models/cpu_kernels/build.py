"""Building the CPU kernels: compile the C++ sources against oneDNN and jaxlib's XLA FFI
headers with ``g++`` once (cached by :mod:`kpsem_jax.native`), load the library and register its
handlers with XLA. :func:`available` builds on first call; the ops in
:mod:`kpsem_jax.models.cpu_kernels` wrap the handlers. Environment: see the package's docstring.
"""

import ctypes
import os
import platform
import sys
from typing import Optional

import jax

from kpsem_jax import jax_options
from kpsem_jax import native

SOURCES = tuple(os.path.join(os.path.dirname(__file__), name) for name in
                ("onednn_conv.cc", "regional_argmax.cc", "batch_norm.cc", "max_pool.cc"))
_TARGETS = {"kpsem_onednn_conv_forward": "KpsemOnednnConvForward",
            "kpsem_onednn_conv_forward_bf16": "KpsemOnednnConvForwardBf16",
            "kpsem_onednn_conv_forward_blocked": "KpsemOnednnConvForwardBlocked",
            "kpsem_onednn_conv_input_grad": "KpsemOnednnConvBackwardInput",
            "kpsem_onednn_conv_kernel_grad": "KpsemOnednnConvBackwardKernel",
            "kpsem_regional_argmax": "KpsemRegionalArgmax",
            "kpsem_batch_norm_sums": "KpsemBatchNormSums",
            "kpsem_batch_norm_grad_sums": "KpsemBatchNormGradSums",
            "kpsem_max_pool_grad": "KpsemMaxPoolGrad"}


class _State:
  library: Optional[ctypes.CDLL] = None
  reason: Optional[str] = None  # why it is unavailable, once tried


def _onednn_root() -> Optional[str]:
  candidates = [os.environ.get("KPSEM_JAX_ONEDNN_ROOT"), sys.prefix, "/usr/local", "/usr"]
  for root in filter(None, candidates):
    if (os.path.exists(os.path.join(root, "include", "oneapi", "dnnl", "dnnl.hpp"))
        and os.path.exists(os.path.join(root, "lib", "libdnnl.so"))):
      return root
  return None


def _build(compiler: str, root: str) -> str:
  """Compiles the extension once per source/jaxlib/oneDNN combination; returns its path."""
  lib_dir = os.path.join(root, "lib")
  # Portable x86-64 code (no -march=native: the cache may be shared between machines);
  # no FMA contraction, so the argmax scores round exactly as XLA's do.
  command = lambda out: [  # noqa: E731
      compiler, "-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w",
      "-I" + jax.ffi.include_dir(), "-I" + os.path.join(root, "include"), *SOURCES, "-o", out,
      "-L" + lib_dir, "-ldnnl", "-Wl,-rpath," + lib_dir]
  return native.build_library("onednn_conv", SOURCES, command, key=jax.__version__)


def _load() -> None:
  if _State.library is not None or _State.reason is not None:
    return
  if not jax_options.cpu_kernels_allowed():
    _State.reason = "turned off by KPSEM_JAX_ONEDNN=0"
    return
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    _State.reason = f"built only on x86-64 Linux, not {platform.system()} {platform.machine()}"
    return
  root, compiler = _onednn_root(), native.compiler()
  if root is None:
    _State.reason = ("oneDNN not found: install onednn-devel-cpu-gomp (requirements.txt) or "
                     "set KPSEM_JAX_ONEDNN_ROOT")
    return
  if compiler is None:
    _State.reason = "no C++ compiler found (set CXX or install g++)"
    return
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler, root))
  except (RuntimeError, OSError) as e:
    _State.reason = str(e)
    return
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  _State.library = library


def available() -> bool:
  """Whether the kernels are built and registered (builds them on first call)."""
  _load()
  return _State.library is not None


def unavailable_reason() -> Optional[str]:
  """Why :func:`available` is False (None when it is True)."""
  _load()
  return _State.reason


def require() -> None:
  """Raises when the kernels are unavailable, saying why."""
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
