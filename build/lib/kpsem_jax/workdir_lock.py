"""One writer per folder: an advisory lock held by the run that owns it.

``workdir/lock`` is ``flock``-ed for the whole run by process 0 of the job and names its
holder (pid, host, start time). A second run on the same workdir stops at once with an
error naming the holder; the lock of a process that died (even by ``kill -9``) is released
by the operating system, and the next run takes it over, saying whose it was. The other
processes of a multi-host job share process 0's lock. ``prepare`` holds the same kind of
lock on the dataset folder it builds.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Optional


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds ``workdir/<name>`` (create ``workdir`` first);
  ``instead`` ends the message to a second writer (what else it can do)."""

  def __init__(self, workdir: str, log=print, name: str = "lock",
               instead: str = "use another --workdir"):
    self.path = os.path.join(workdir, name)
    self.log = log
    self.instead = instead
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirInUseError(
          f"{os.path.dirname(self.path)} is in use by {self._holder() or 'another run'} "
          f"(its lock: {self.path}); wait for it to finish, stop it, or {self.instead}"
      ) from None
    previous = self._holder(fd)
    if previous:
      self.log(f"taking over the lock of a run that is gone ({previous})")
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(dict(
          pid=os.getpid(), host=socket.gethostname(),
          started=datetime.datetime.now().isoformat(timespec="seconds"))).encode(), 0)
      os.fsync(fd)
    except OSError as e:  # a full disk: the error names the lock file
      os.close(fd)
      raise OSError(e.errno, e.strerror, self.path) from None
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean finish leaves no holder behind
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def _holder(self, fd: Optional[int] = None) -> str:
    try:
      if fd is None:
        with open(self.path, encoding="utf-8") as f:
          text = f.read()
      else:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      info = json.loads(text)
      return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
      return ""

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def owned(workdir: str):
  """Holds ``workdir``'s lock for a job of one or more processes: process 0 takes it; when
  another run holds it, every process raises :class:`WorkdirInUseError` naming the holder."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from kpsem_jax import process_zero  # pylint: disable=import-outside-toplevel
  lock, error = None, ""
  if process_zero.is_main():
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except WorkdirInUseError as e:
      lock, error = None, str(e)
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
    if failed and not error:
      error = f"process 0 could not lock {workdir}: another run holds it (see process 0's log)"
  if error:
    raise WorkdirInUseError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
