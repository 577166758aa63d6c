"""What every command-line entry point shares: one start, one ``error:`` line per failure,
quiet libraries.

    def main(argv):
      with cli.one_line_errors(FileNotFoundError, checkpoint.CheckpointError):
        ...

    if __name__ == "__main__":
      cli.run(main, define_flags)

- :func:`run`: the one prologue: the flags defined and parsed (a mistake is one line), JAX's
  options set before JAX starts (``jax_options.configure``), then :func:`prologue`, then
  ``main(argv)``.

- :func:`prologue`: absl logs at WARNING, orbax's own log records (and asyncio's about
  orbax's tasks) dropped (every orbax failure reaches the caller as an exception and is
  reported as one line), and the reports a failed orbax read or write leaves behind
  (``RuntimeError: Event loop is closed`` from TensorStore's late callbacks, orbax's
  unfinished coroutines collected at exit) silenced.
- :func:`one_line_errors`: the listed exception types become ``error: <message>`` and exit
  status 1; so does an operating system's refusal (a full disk, a read-only file system, no
  permission, a path that is not a folder or does not exist), as ``error: <what was being
  done>: <path>: <reason>``; a stop on a signal
  (:class:`kpsem_jax.preemption.Interrupted`) prints its line
  and exits with 128 + the signal's number, as a shell reports a killed command.
"""

import contextlib
import errno
import logging as std_logging
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional

from kpsem_jax import preemption


def fail(message: str, status: int = 1) -> NoReturn:
  """Prints ``error: message`` to stderr and exits with ``status``."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


# The operating system's refusals reported in one line, with what to do about each.
OS_ERRORS = {errno.ENOSPC: "free space there, then rerun the same command",
             errno.EDQUOT: "free space there, then rerun the same command",
             errno.EROFS: "the file system is read-only: choose a writable place",
             errno.EACCES: "choose a place you may write, or fix its permissions",
             errno.EPERM: "choose a place you may write, or fix its permissions",
             errno.ENOTDIR: "a file stands where a folder is needed",
             errno.ENOENT: "check the path", errno.EISDIR: "name a file, not a folder",
             errno.EEXIST: "a file stands where a folder is to be made"}


def os_error_line(e: OSError, doing: str = "") -> str:
  """``<doing>: <path>: <reason>; <what to do>`` for an operating system's refusal."""
  parts = [doing] if doing else []
  if e.filename:
    parts.append(str(e.filename))
  parts.append(f"{e.strerror or e}; {OS_ERRORS.get(e.errno, 'see the path above')}")
  return ": ".join(parts)


@contextlib.contextmanager
def one_line_errors(*types: type, doing: str = ""):
  """Turns the exception ``types`` raised inside, and the operating system's refusals
  (``OS_ERRORS``), into one ``error:`` line, exit status 1; ``doing`` says what was being
  done (``"training in workdirs/x"``)."""
  try:
    yield
  except preemption.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    fail("interrupted", 130)
  except types as e:  # pylint: disable=catching-non-exception
    fail(str(e))
  except OSError as e:
    if e.errno not in OS_ERRORS:
      raise
    fail(os_error_line(e, doing))


def parse_flags(argv):
  """absl's flag parsing, with a missing required flag, a value that does not parse or a
  ``--config`` file that does not load (``config_error``) as one ``error:`` line, exit
  status 1."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [" ".join(l.split()) for l in str(e).splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):  # a config file's own exception
      lines = [lines[0].rstrip(":") + ":", lines[-1]]
    fail(" ".join(lines))
  except (OSError, SyntaxError, ValueError, AttributeError, KeyError) as e:
    fail(config_error(e, argv))


def config_error(e: Exception, argv) -> str:
  """One line for a ``--config`` file that cannot be read or a field it does not have."""
  if isinstance(e, SyntaxError):
    return f"{e.filename}, line {e.lineno}: {e.msg} (the --config file is not valid Python)"
  if isinstance(e, ValueError):  # get_config(arg) refused its variant
    return f"--config: {e}"
  if isinstance(e, OSError):
    from kpsem_jax import config_base  # pylint: disable=import-outside-toplevel
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return (f"--config={given[-1] if given else ''}: no such readable config file (the "
            f"configs are in {config_base.configs_dir()})")
  text = str(e.args[0]) if e.args else str(e)
  # ml_collections: "'x'\nDid you mean "y" ...", escaped once more on its way through absl
  text = text.replace("\\\\", "\\").replace("\\n", "\n").replace("\\'", "'")
  first, _, rest = text.partition("\n")
  field = first.strip("'\"\\ ")
  hint = re.search(r'Did you mean "([^"]+)"', rest)
  given = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a]
  return (f"{given[0] if given else '--config'}: the config has no field {field!r}"
          + (f"; did you mean {hint.group(1)!r}?" if hint else "")
          + " (--config_help lists the fields)")


def run(main: Callable, define_flags: Optional[Callable] = None) -> None:
  """Runs ``main(argv)`` as a program, every entry point's one start (the module's
  docstring)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  if define_flags is not None:
    define_flags()

  def start(argv):
    from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
    jax_options.configure()  # before JAX starts
    prologue()
    return main(argv)
  app.run(start, flags_parser=parse_flags)


def prologue() -> None:
  """absl logging at WARNING, orbax's log records and event-loop reports silenced."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)
  for logger in (logging.get_absl_logger(), std_logging.getLogger("asyncio")):
    if not any(isinstance(f, _DropOrbaxRecords) for f in logger.filters):
      logger.addFilter(_DropOrbaxRecords())
  if not isinstance(sys.unraisablehook, _DropClosedLoopReports):
    sys.unraisablehook = _DropClosedLoopReports(sys.unraisablehook)


class _DropOrbaxRecords:
  """A logging filter: records written by orbax's modules, and asyncio's reports of its
  tasks (``Task exception was never retrieved`` after a failed write), are dropped."""

  def filter(self, record) -> bool:
    if "/orbax/" in record.pathname.replace("\\", "/"):
      return False
    # This project runs no asyncio code of its own: its tasks are orbax's.
    return record.name != "asyncio" or "exception was never retrieved" not in str(record.msg)


class _DropClosedLoopReports:
  """``sys.unraisablehook`` without the reports a failed orbax read or write leaves:
  TensorStore's late callbacks into orbax's closed event loop, and orbax's unfinished
  coroutines collected at exit."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    if (isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"):
      return
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    if any("/orbax/" in frame.filename.replace("\\", "/") for frame in frames):
      return
    self.previous(unraisable)
