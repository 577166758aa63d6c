"""What this process may use of its host: its cores, and paths as printable text."""

import os


def usable_cores() -> int:
  """The cores this process may use (its CPU affinity): ``prepare --workers`` and the
  loader's ``num_workers=-1`` default to it."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def printable(path: str) -> str:
  """``path`` as valid UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogate
  escapes) shown as ``\\xff``; a valid path is returned unchanged."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")
