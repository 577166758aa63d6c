"""C++ built on first use: a compiler found on the machine, one cached shared library per
source and command (the CPU kernels of ``kpsem_jax.models.cpu_kernels``,
``kpsem_jax.data.resample``).

Libraries go to ``KPSEM_JAX_CACHE`` (default ``~/.cache/kpsem_jax``), named by a digest of
the command, ``key`` and the sources, so a changed source builds anew. Each is compiled
beside its final name and renamed: concurrent or interrupted builds never leave a
half-written library under that name.
"""

import hashlib
import os
import shutil
import subprocess
from typing import Callable, List, Optional, Sequence

from kpsem_jax import atomic


def compiler() -> Optional[str]:
  """``$CXX``, else ``g++``, else ``c++``: the first found, or None."""
  for name in filter(None, [os.environ.get("CXX"), "g++", "c++"]):
    if shutil.which(name):
      return shutil.which(name)
  return None


def build_library(name: str, sources: Sequence[str], command: Callable[[str], List[str]],
                  key: str = "") -> str:
  """The path of the library ``command(output path)`` compiles from ``sources``, compiled
  only when no library of this command, ``key`` and sources is cached; a failed compile
  raises ``RuntimeError`` with the compiler's message."""
  digest = hashlib.sha256(repr((command(""), key)).encode())
  for source in sources:
    with open(source, "rb") as f:
      digest.update(f.read())
  cache = os.path.expanduser(os.environ.get("KPSEM_JAX_CACHE", "~/.cache/kpsem_jax"))
  path = os.path.join(cache, f"{name}-{digest.hexdigest()[:16]}.so")
  if os.path.exists(path):
    return path
  os.makedirs(cache, exist_ok=True)
  with atomic.replacing(path, suffix=".so") as tmp:
    done = subprocess.run(command(tmp), capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"compiling {', '.join(sources)} failed ({' '.join(command(path))}):"
                         f"\n{done.stderr[-2000:]}")
  return path
