"""Files written whole: readers see the old file or the new one, never a part.

    with atomic.replacing(path) as tmp:   # a temporary sibling of path
      write_to(tmp)                       # on success tmp is renamed over path

The temporary file is created with the permissions a plain ``open`` would give (0666 less
the umask, not ``mkstemp``'s private 0600); it is removed when the block raises.
"""

import contextlib
import os
import tempfile


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def replacing(path: str, suffix: str = ""):
  """Yields a temporary path beside ``path``; renamed over ``path`` when the block ends
  without an error, removed otherwise. ``suffix`` keeps an extension tools look at."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix,
                             dir=folder)
  os.close(fd)
  try:
    os.chmod(tmp, 0o666 & ~_umask())
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` whole."""
  with replacing(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` whole."""
  with replacing(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def check_writable(folder: str) -> None:
  """Raises the ``OSError`` that writing a file in ``folder`` would (read-only file system,
  no permission, no space for a block, not a folder): checked before long work that ends in
  writing there."""
  fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
  try:
    os.write(fd, b"\0" * 4096)
    os.fsync(fd)
  finally:
    os.close(fd)
    os.remove(probe)
