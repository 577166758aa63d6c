"""The training log: ``metrics.jsonl`` and TensorBoard events, written by process 0.

A resumed run first drops the rows after its step (they are logged again) and the
``final/`` rows, so the file holds one row per logged step however often a run resumes.
Each row also carries ``time`` (UTC, ISO 8601, to the second) and ``elapsed_s`` (seconds
since ``started``, a ``time.monotonic()`` reading: the run's start in this process).
"""

import datetime
import json
import os
import time
from typing import Dict, Optional

import jax
import numpy as np

from kpsem_jax import atomic
from kpsem_jax import process_zero


class MetricWriter:
  """``metrics.jsonl`` and TensorBoard events (process 0 only).

  ``resume_step``: a resumed run first drops the rows after that step (they are logged again)
  and the ``final/`` rows, so the file holds one row per logged step after any resumes.
  """

  def __init__(self, workdir: str, resume_step: Optional[int] = None,
               started: Optional[float] = None):
    self.active = process_zero.is_main()
    self.started = time.monotonic() if started is None else started
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      path = os.path.join(workdir, "metrics.jsonl")
      if resume_step is not None and os.path.exists(path):
        _keep_rows_up_to(path, resume_step)
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self.jsonl = open(path, "a")

  def write(self, step: int, prefix: str, metrics: Dict[str, float]):
    if not self.active:
      return
    scalars = {f"{prefix}/{k}": float(v) for k, v in metrics.items()
               if np.ndim(v) == 0 and not isinstance(v, str)}
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    elapsed = round(time.monotonic() - self.started, 3)
    self.jsonl.write(json.dumps(dict(step=step, time=now, elapsed_s=elapsed, **scalars)) + "\n")
    self.jsonl.flush()
    self.tb.flush()

  def image(self, step: int, tag: str, pixels: np.ndarray):
    """A ``(H, W, 3)`` uint8 image to TensorBoard, under ``tag``."""
    if self.active:
      self.tb.add_image(tag, np.asarray(pixels), step, dataformats="HWC")
      self.tb.flush()

  def close(self):
    if self.active:
      self.tb.close()
      self.jsonl.close()


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites ``metrics.jsonl`` without rows after ``step`` or of the final evaluation."""
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut by a crash mid-write
      if row.get("step", 0) <= step and not any(k.startswith("final/") for k in row):
        kept.append(json.dumps(row) + "\n")
  atomic.write_text(path, "".join(kept))


def record_inputs(workdir: str, step: int, video_index: Optional[list] = None,
                  params_sha256: Optional[str] = None) -> None:
  """Appends what this process read at ``step`` (and a digest of its parameters) to
  ``workdir/inputs/process_{i}.jsonl`` (``config.record_inputs``, for debugging)."""
  os.makedirs(os.path.join(workdir, "inputs"), exist_ok=True)
  row = {"step": int(step), "process_count": jax.process_count()}
  if video_index is not None:
    row["video_index"] = list(video_index)
  if params_sha256 is not None:
    row["params_sha256"] = params_sha256
  with open(os.path.join(workdir, "inputs", f"process_{jax.process_index()}.jsonl"),
            "a") as f:
    f.write(json.dumps(row) + "\n")
