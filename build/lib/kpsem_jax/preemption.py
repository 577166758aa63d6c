"""Stop requests while training: SIGTERM (a scheduler's notice before it kills a job) and
SIGINT (Ctrl-C).

``with StopRequests() as stop:`` replaces both signals' handlers by one that only records
the request; the training loop asks :meth:`StopRequests.agreed` after each step, saves a
checkpoint at that step and ends. After a first Ctrl-C a second one stops at once
(Python's ``KeyboardInterrupt``). In a multi-host job the processes agree: each asks every
step, one tiny all-gather of the flags, so all stop after the same step even when only one
of them got the signal.
"""

import signal
import threading
from typing import Optional

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """The run stopped on a signal; ``signum`` is the signal, the message says what was kept."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class StopRequests:
  """Records SIGTERM and SIGINT for the duration of a ``with`` block (main thread only;
  elsewhere it records nothing and the signals keep their handlers)."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _record(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.signum = self.signum or signum
    if signum == signal.SIGINT:  # a second Ctrl-C stops at once
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def agreed(self) -> Optional[int]:
    """The signal any process got (the lowest number when several), else None. Every
    process of a multi-host job must call it at the same step: it is a collective."""
    got = self.signum or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      flags = np.asarray(multihost_utils.process_allgather(np.int32(got)))
      got = int(min((f for f in flags.ravel() if f), default=0))
    return got or None
