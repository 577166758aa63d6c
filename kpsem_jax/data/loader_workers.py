"""The loader's worker processes (grain's ``mp_prefetch``): batches made whole one per worker
and handed over in order, signals left to the main process (a Ctrl-C or SIGTERM is the
trainer's to handle; workers ignore both), workers that end with their parent, and shared
memory unlinked as soon as a batch arrives.
"""

import os
import signal
import threading
import time

from absl import flags
import grain.python as grain

from kpsem_jax import preemption
from kpsem_jax.host import usable_cores


def resolve_workers(num_workers: int) -> int:
  """``config.num_workers``: a count, or -1 for one per core this process may use (none
  on a single core, where a worker process would only add copying)."""
  if num_workers >= 0:
    return int(num_workers)
  cores = usable_cores()
  return cores if cores > 1 else 0


# Batches made ahead of the one being consumed: by a thread of the training process when it
# makes them itself, else by each worker process (its one-batch hand-over buffer). Host
# memory is bounded in batches, not by the length of the videos.
PREFETCH_BATCHES = 2


def _released(element: dict) -> dict:
  """Unlinks now the shared memory under a worker process's arrays (the mapping stays
  valid until the arrays are freed). grain unlinks it in a background thread when an array
  is freed, and at exit those requests may not have run: Python then warns of "leaked
  shared_memory objects" (google/grain#398)."""
  for value in element.values():
    shm = getattr(value, "shm", None)
    if shm is not None and getattr(value, "_unlink_on_del", False):
      shm.unlink()
      value._unlink_on_del = False  # pylint: disable=protected-access
  return element


def prefetched(dataset: "grain.MapDataset", workers: int):
  """The iterator of ``dataset``, in order: made in this process, ``PREFETCH_BATCHES``
  ahead by one thread, or in ``workers`` spawned processes, each making one element at a
  time and handing it over."""
  if workers <= 0:
    return iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=PREFETCH_BATCHES)))
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (a notebook, pytest)
    flags.FLAGS.mark_as_parsed()
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=1), worker_init_fn=_worker_signals)
  return _StartedWithStopSignalsBlocked(iter(iterable.map(_released)))


class _StartedWithStopSignalsBlocked:
  """An iterator whose first ``next()`` (when grain starts the worker processes) runs with
  SIGINT and SIGTERM blocked: a started process inherits the blocked mask and keeps it
  until :func:`_worker_signals` ignores both, so a Ctrl-C during start-up (it reaches the
  whole process group) never kills a worker; the main process gets it on unblocking."""

  def __init__(self, iterator):
    self._iterator, self._started = iterator, False

  def __iter__(self):
    return self

  def __next__(self):
    if self._started:
      return next(self._iterator)
    self._started = True
    if threading.current_thread() is not threading.main_thread():
      return next(self._iterator)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, preemption.SIGNALS)
    try:
      return next(self._iterator)
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, previous)

  def close(self):
    if hasattr(self._iterator, "close"):
      self._iterator.close()


def _worker_signals(worker_index: int, worker_count: int) -> None:  # pylint: disable=unused-argument
  """In a worker process: SIGINT and SIGTERM are left to the main process (Ctrl-C reaches
  the whole process group; the main process saves, then stops its workers), and the
  worker exits when the main process dies (:func:`_exit_with_parent`)."""
  for signum in preemption.SIGNALS:
    signal.signal(signum, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, preemption.SIGNALS)
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True,
                   name="exit-with-parent").start()


def _exit_with_parent(parent: int, period_s: float = 1.0) -> None:
  """Ends this process within ``period_s`` once ``parent`` is gone (killed with SIGKILL,
  say). Linux's PR_SET_PDEATHSIG would be sooner, but it fires when the parent *thread*
  that started the worker ends: grain starts workers from a thread pool whose threads end
  when the loader is closed, and the killed workers then left their last batch's shared
  memory behind ("leaked shared_memory objects" at exit)."""
  while os.getppid() == parent:
    time.sleep(period_s)
  os._exit(1)  # pylint: disable=protected-access
