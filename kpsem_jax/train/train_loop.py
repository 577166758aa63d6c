"""The training loop: steps ``start + 1 .. config.num_train_steps`` of a trainer's compiled
step, with logs, evaluations and checkpoints.

    state = train_loop.run(trainer, state, step_fn, checkpoints, start, stop, evaluated)

A non-finite loss or parameter raises :class:`Diverged` naming the last good checkpoint
(the state is never saved); a failed save raises :class:`checkpoint.CheckpointError`; on
SIGTERM or SIGINT the step reached is saved and :class:`preemption.Interrupted` raised.
"""

import time
from typing import Any, Dict, Optional

import jax
import numpy as np
from tqdm import tqdm

from kpsem_jax import preemption, process_zero
from kpsem_jax.train import metric_log
from kpsem_jax.train.train_step import diverged


class Diverged(RuntimeError):
  """A step whose loss or parameters are not finite; the message names the last good
  checkpoint."""


def run(trainer, state, step_fn, checkpoints, start: int, stop: preemption.StopRequests,
        evaluated: Optional[Dict[int, Any]] = None):
  """Trains ``trainer`` (a :class:`kpsem_jax.train.trainer.Trainer`) from ``start``; each
  periodic evaluation's metrics are kept in ``evaluated`` by step. Returns the state."""
  total = trainer.config.num_train_steps
  if start >= total:
    process_zero.log(f"{trainer.workdir} is already at step {start} (config.num_train_steps="
                     f"{total}): nothing to train; evaluating step {start}")
    return state
  loop = _Loop(trainer, checkpoints, start, stop, evaluated)
  try:
    return loop.run(state, step_fn)
  finally:
    loop.close()


class _Loop:
  """One run of the loop: its iterator, metric writer, progress bar and timers."""

  def __init__(self, trainer, checkpoints, start, stop, evaluated):
    self.trainer, self.config = trainer, trainer.config
    self.checkpoints, self.start, self.stop = checkpoints, start, stop
    self.evaluated = evaluated
    self.iterator = trainer.train_iterator(start)
    self.writer = metric_log.MetricWriter(trainer.workdir, resume_step=start,
                                          started=trainer.started)
    # The bar opens after the first step, whose compilation would otherwise fill its ETA.
    self.bar = tqdm(total=self.config.num_train_steps, initial=start, desc="train",
                    disable=True)
    self.last_time, self.last_step = time.perf_counter(), start
    self.waited = 0.0  # seconds spent waiting for batches since the last logged step
    self.state = None

  def close(self) -> None:
    self.iterator.close()  # its worker processes
    self.writer.close()
    self.bar.close()

  def run(self, state, step_fn):
    self.state = state
    total = self.config.num_train_steps
    self.stop_requested(self.start)
    for step in range(self.start + 1, total + 1):
      metrics = self.one_step(step, step_fn)
      if step % self.config.log_every == 0 or step == total:
        self.log(step, jax.device_get(metrics))
      if step % self.config.eval_every == 0 or step == total:
        self.evaluate(step, metrics)
      if step % self.config.checkpoint_every == 0 or step == total:
        self.check_finite(step, jax.device_get(metrics))
        self.save(step)
      self.stop_requested(step, metrics)
    return self.state

  def one_step(self, step: int, step_fn):
    before = time.perf_counter()
    batch = next(self.iterator)
    self.waited += time.perf_counter() - before
    self.trainer.record_inputs(step, batch)
    clips, labels = self.trainer.global_batch(batch)
    if step == self.start + 1:
      if self.config.memory_fit == "off":
        process_zero.log("compiling the train step (the first step takes the compilation's "
                         "time)...")
      self.state, metrics = step_fn(self.state, clips, labels)
      jax.block_until_ready(metrics["loss"])
      self.bar = tqdm(total=self.config.num_train_steps, initial=step, desc="train",
                      dynamic_ncols=True, disable=not process_zero.is_main())
    else:
      self.state, metrics = step_fn(self.state, clips, labels)
      self.bar.update(1)
    return metrics

  def check_finite(self, step: int, metrics) -> None:
    if diverged(metrics) is not None:
      self.bar.close()
      last = self.checkpoints.last_saved
      where = ("no checkpoint was written before it" if last is None else
               f"the last good checkpoint is step {last} in {self.checkpoints.directory}")
      raise Diverged(f"{diverged(metrics)} at step {step}; stopping: {where} (lower "
                     "config.optimizer.lr, or check the data)")

  def log(self, step: int, metrics) -> None:
    self.check_finite(step, metrics)
    now = time.perf_counter()
    rate = (step - self.last_step) * self.config.batch_size / (now - self.last_time)
    data_wait = self.waited / (now - self.last_time)  # the share of the time it waited
    self.last_time, self.last_step, self.waited = now, step, 0.0
    logged = {k: v for k, v in metrics.items() if k != "params_finite"}
    self.writer.write(step, "train", dict(logged, clips_per_second=rate, data_wait=data_wait))
    self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2g}",
                         clips_s=f"{rate:.1f}")

  def evaluate(self, step: int, metrics) -> None:
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    m = self.trainer.evaluate(variables, desc=f"eval@{step}", stop=self.stop)
    if m is None:  # abandoned on a stop request
      self.stop_requested(step, metrics, asked=False)
    self.writer.write(step, "eval", m)
    if self.evaluated is not None:
      self.evaluated[step] = m
    self.checkpoints.save_best(step, m["video_top1"], variables, self.trainer.metadata(step))
    self.bar.write(f"step {step}: eval video top-1 {m['video_top1']:.4f}, clip top-1 "
                   f"{m['clip_top1']:.4f} ({m['num_videos']} videos)")

  def save(self, step: int) -> None:
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    opt_state = {"opt_state": self.state.opt_state, "step": self.state.step}
    self.checkpoints.save(step, variables, opt_state, self.trainer.metadata(step))

  def stop_requested(self, step: int, metrics=None, asked: bool = True) -> None:
    """On an agreed stop request (``asked``: ask now; else one already came): saves
    ``step`` unless it is saved or diverged, then raises :class:`preemption.Interrupted`."""
    signum = self.stop.agreed() if asked else self.stop.signum
    if signum is None:
      return
    self.bar.close()
    kept = "saved" if step else "nothing was trained yet"
    if self.checkpoints.last_saved != step and step > self.start:
      metrics = jax.device_get(metrics)  # read only once a signal came
      if diverged(metrics) is None:
        self.save(step)
      else:  # never checkpoint a diverged state
        kept = (f"not saved ({diverged(metrics)}); the last good checkpoint is step "
                f"{self.checkpoints.last_saved}")
    raise preemption.Interrupted(
        f"interrupted at step {step}; {kept}; rerun the same command to resume", signum)


def final_evaluation(trainer, state, total: int, evaluated: Dict[int, Any],
                     stop: preemption.StopRequests) -> Dict[str, Any]:
  """The metrics of step ``total``: its periodic evaluation when there was one, else a new
  one; a stop request during it raises :class:`preemption.Interrupted` (the step is saved)."""
  trainer.record_inputs(total, state=state)
  final = evaluated.get(total)
  if final is None:
    final = trainer.evaluate({"params": state.params, "batch_stats": state.batch_stats},
                             desc="final eval", stop=stop)
  if final is None:
    raise preemption.Interrupted(
        f"interrupted during the final evaluation; step {total} is saved; rerun the same "
        "command to evaluate it", stop.signum)
  return final


def report_final(trainer, final: Dict[str, Any], total: int) -> None:
  """The final evaluation's files, ``metrics.jsonl`` rows (a rerun replaces them) and line."""
  split = trainer.config.dataset.eval_split
  base = trainer.write_eval(final, total, split)
  writer = metric_log.MetricWriter(trainer.workdir, resume_step=total, started=trainer.started)
  writer.write(total, "final", final)
  if process_zero.is_main():
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(base + "_confusion.png") as picture:
      writer.image(total, f"{split}/confusion", np.asarray(picture.convert("RGB")))
  writer.close()
  process_zero.log(f"final {split}: video top-1 {final['video_top1']:.4f}, top-5 "
                   f"{final['video_top5']:.4f}, clip top-1 {final['clip_top1']:.4f} over "
                   f"{final['num_videos']} videos; details in {base}.json")
