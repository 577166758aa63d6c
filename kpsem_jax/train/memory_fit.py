"""Will a compiled step fit in memory? Measured from XLA's own buffer assignment.

A step's need is what its compiled program allocates: arguments, outputs (less those that
alias donated arguments) and temporaries (``Compiled.memory_analysis()``), per device; on a
CPU every local device's copy lives in host memory. What a device can still hold is its
allocator's limit less what is in use (accelerators), or the host's available memory (CPUs,
``/proc/meminfo``'s ``MemAvailable``, within a cgroup's limit when there is one).

:func:`largest_fitting` picks the largest micro-batch that fits from two compiles, by the
need's straight line in the batch (activations and gradients grow with it, the parameters
do not), and checks the pick by compiling it.
"""

from typing import Callable, Optional, Sequence, Tuple

import jax

GIB = 2 ** 30
# Kept free beside a step: the data loader's workers, Python, fragmentation.
HEADROOM = 0.85


class DoesNotFit(ValueError):
  """Even the smallest batch does not fit; the message names the sizes."""


def need_bytes(compiled) -> int:
  """Bytes one device's copy of ``compiled`` allocates: arguments + outputs not aliased to
  donated arguments + temporaries (0 where the backend reports no analysis)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return 0
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def _host_available_bytes() -> int:
  """``MemAvailable`` (``/proc/meminfo``), within the cgroup v2/v1 limit; 0 if unknown."""
  available = 0
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except OSError:
    return 0
  for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                 "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    try:
      with open(limit_file) as f:
        limit = f.read().strip()
      with open(used_file) as f:
        used = int(f.read().strip())
    except (OSError, ValueError):
      continue
    if limit.isdigit() and int(limit) < 2 ** 60:
      available = min(available, max(0, int(limit) - used)) if available else int(limit) - used
  return available


def available_bytes(device: Optional[jax.Device] = None) -> int:
  """Bytes one device can still allocate (0: unknown). On a CPU the host's available memory
  is shared by the local devices, so each gets its share."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return _host_available_bytes() // max(1, jax.local_device_count())


def budget_bytes(limit_gb: float = 0.0) -> int:
  """A device's budget for one step: ``limit_gb`` when > 0 (for tests and for sharing a
  machine), else :data:`HEADROOM` of :func:`available_bytes` (0: unknown, no check); in a
  job of several processes, the smallest of theirs."""
  budget = int(limit_gb * GIB) if limit_gb > 0 else int(available_bytes() * HEADROOM)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    budget = int(multihost_utils.process_allgather(np.int64(budget)).min())
  return budget


def largest_fitting(compile_at: Callable[[int], object], sizes: Sequence[int],
                    budget: int) -> Tuple[int, object, int]:
  """``(size, compiled, need)``: the largest of ``sizes`` whose ``compile_at(size)`` needs at
  most ``budget`` bytes (``sizes`` ascending; the largest is compiled first, then the
  smallest, and the pick between them by the straight line through those two needs, checked
  by compiling it). Raises :class:`DoesNotFit` when even the smallest does not fit."""
  sizes = sorted(set(sizes))
  compiled = {sizes[-1]: compile_at(sizes[-1])}
  needs = {sizes[-1]: need_bytes(compiled[sizes[-1]])}
  if needs[sizes[-1]] <= budget or budget <= 0:
    return sizes[-1], compiled[sizes[-1]], needs[sizes[-1]]
  low = sizes[0]
  if low not in compiled:
    compiled[low] = compile_at(low)
    needs[low] = need_bytes(compiled[low])
  if needs[low] > budget:
    raise DoesNotFit(f"even {low} needs {needs[low] / GIB:.2f} GiB a device, over the "
                     f"{budget / GIB:.2f} GiB budget")
  per_item = (needs[sizes[-1]] - needs[low]) / max(1, sizes[-1] - low)
  for size in reversed(sizes[:-1]):  # the largest the line says fits; lower if it was wrong
    if needs.get(size, needs[low] + per_item * (size - low)) > budget:
      continue
    if size not in compiled:
      compiled[size] = compile_at(size)
      needs[size] = need_bytes(compiled[size])
    if needs[size] <= budget:
      return size, compiled[size], needs[size]
  raise AssertionError("unreachable: the smallest size fits")


def describe(size_bytes: int) -> str:
  """``size_bytes`` in GiB, 2 decimals."""
  return f"{size_bytes / GIB:.2f} GiB"


def fit(what: str, field: str, compile_at: Callable[[int], object], sizes: Sequence[int],
        current: int, budget: int, policy: str, advice: Callable[[int], str],
        log: Callable[[str], None] = print) -> Tuple[int, object]:
  """``(size, compiled)``: ``current`` when it fits ``budget``, else (``policy="split"``)
  the largest of ``sizes`` that does, with a line saying so. ``policy="stop"``, or nothing
  fitting, is one :class:`DoesNotFit` naming the sizes and the ``config.<field>`` to set;
  ``what`` names the compiled function, ``advice(size)`` the flag that picks ``size``."""
  try:
    size, compiled, need = largest_fitting(compile_at, sizes, budget)
  except DoesNotFit as e:
    raise DoesNotFit(
        f"the {what} does not fit in memory: {e} (config.{field}; config.memory_limit_gb "
        "sets the budget); lower config.clip.crop or config.clip.frames, or use a smaller "
        "model (configs/video_folder.py:small)") from None
  if size != current:
    if policy == "stop":
      raise DoesNotFit(
          f"the {what} does not fit in memory with {current} clips (config.{field}); the "
          f"largest that fits the {describe(budget)} budget is {size}: {advice(size)}, or "
          "--config.memory_fit=split to let the run do it")
    log(f"the {what} needs more than the {describe(budget)} a device has with {current} "
        f"clips; using {size} ({describe(need)}): {advice(size)}")
  return size, compiled
