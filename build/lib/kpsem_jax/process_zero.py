"""Process 0 speaks for a multi-process job: its lines are the job's, the others stay quiet."""

import jax


def is_main() -> bool:
  """Whether this is process 0 (the only process of a single-process job)."""
  return jax.process_index() == 0


def log(message: str) -> None:
  """Prints ``message`` on process 0 only."""
  if is_main():
    print(message)
