"""A training run: its state, set-up and final evaluation.

``train_and_evaluate(config, workdir)`` trains ``config`` (see ``configs/``) and evaluates it
(the loop itself: ``train_loop.py``; ``workdir_eval.py`` evaluates a finished workdir).

- Devices: the train step and eval forward are ``jax.shard_map`` over a 1-D ``data`` mesh of
  every device of every process (``train_step.py``); each process reads its own slice of
  every global batch, whose sequence depends on the seed only.
- Checkpoints: :class:`training_checkpoints.TrainingCheckpoints` owns their rules; the
  data position is the step itself, so a rerun resumes with the same batches. A non-finite loss
  or parameter stops the run and is never saved; SIGTERM or SIGINT saves the step reached
  and raises :class:`kpsem_jax.preemption.Interrupted`. A run holds ``workdir/lock``.
- Before anything runs: the config's fields (``kpsem_jax/config_base.py``), the dataset
  (``datasets.py``), and whether the compiled step fits in memory (``memory_fit.py``).
"""

import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from kpsem_jax import config_base
from kpsem_jax import preemption, process_zero, workdir_lock
from kpsem_jax.data import datasets
from kpsem_jax.train import checkpoint as checkpoint_lib
from kpsem_jax.train import (eval_loop, evaluation, memory_fit, metric_log, train_loop,
                             training_checkpoints)
from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import input_pipeline as ip
from kpsem_jax.models.classifier import create_model
from kpsem_jax.train import train_step as ts
from kpsem_jax.train.optimizer import create_optimizer, lr_schedule, state_differences


class TrainingError(RuntimeError):
  """A run that cannot go on (a bad config, divergence, ...); the message says why."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`TrainingError` naming every field its rule (``kpsem_jax/config_base.py``'s
  ``FIELDS``) refuses, one ``error:`` line each."""
  found = config_base.violations(config)
  if found:
    raise TrainingError("\nerror: ".join(found))


class Trainer:
  """Holds the mesh, model, optimizer, compiled steps and data sources of a run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    self.started = time.monotonic()  # metrics.jsonl's elapsed_s counts from here
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.mesh = ts.data_mesh()
    self.replicated = jax.NamedSharding(self.mesh, jax.P())
    self.data_sharding = jax.NamedSharding(self.mesh, jax.P(None, ts.DATA_AXIS))
    self.eval_sharding = jax.NamedSharding(self.mesh, jax.P(ts.DATA_AXIS))
    self.accum = int(config.grad_accum_steps)
    try:
      self.micro = ts.micro_batch(config.batch_size, self.accum, config.eval_batch_size)
    except ValueError as e:
      raise TrainingError(str(e)) from None
    self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    try:
      self.class_names, self.train_source, self.eval_source = datasets.open_dataset(
          config.dataset)
    except datasets.DatasetError as e:
      raise TrainingError(str(e)) from None
    self.spec, self.schedule = config_base.model_spec(config), lr_schedule(config)
    self.model = create_model(**self.spec, conv_strategy=config.model.conv_strategy,
                              batch_norm_axis=ts.DATA_AXIS)
    self.eval_forward = ts.make_eval_forward(self.model, self.dtype, self.mesh)
    self.eval_batch = int(config.eval_batch_size)
    self.clip_shape = (config.clip.frames, config.clip.crop, config.clip.crop, 3)

  # ---- state -------------------------------------------------------------------------
  def initial_state(self) -> Tuple[ts.TrainState, Any, Any]:
    dummy = jnp.zeros((1,) + self.clip_shape, self.dtype)
    variables = jax.jit(self.model.init)(jax.random.PRNGKey(self.config.seed), dummy)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    pretrained = None
    if self.config.init_from:
      params, batch_stats, pretrained = checkpoint_lib.load_pretrained(
          self.config.init_from, params, batch_stats, process_zero.log)
    tx = create_optimizer(self.config, pretrained, self.schedule)
    state = ts.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
    return jax.device_put(state, self.replicated), tx, pretrained

  def metadata(self, step: int) -> Dict[str, Any]:
    return checkpoint_lib.make_metadata(self.spec, self.config.clip.frames, self.class_names,
                                        step, self.config.to_dict(),
                                        process_count=jax.process_count())

  def resume(self, checkpoints: training_checkpoints.TrainingCheckpoints, state: ts.TrainState
             ) -> Tuple[int, ts.TrainState]:
    """``(step, state)`` of the newest intact checkpoint (``(0, state)`` when there is none);
    one written with other data settings resumes with a line naming them."""
    try:
      optimizer = self.config.optimizer.to_dict()
      found = checkpoints.resume(
          {"params": state.params, "batch_stats": state.batch_stats},
          {"opt_state": state.opt_state, "step": state.step}, self.spec,
          lambda metadata: state_differences(
              (metadata.get("config") or {}).get("optimizer") or {}, optimizer))
    except training_checkpoints.CheckpointMismatch as e:  # another model: not damage
      raise TrainingError(str(e)) from None
    if found is None:
      return 0, state
    step, variables, opt_state, metadata = found
    state = ts.TrainState(opt_state["step"], variables["params"], variables["batch_stats"],
                          opt_state["opt_state"])
    process_zero.log(f"resuming from step {step} ({checkpoints.directory})")
    changes = training_checkpoints.data_changes(metadata.get("config") or {}, self.config.to_dict())
    if changes:
      process_zero.log(f"the data settings differ from the checkpoint's ({'; '.join(changes)}"
                       f"): from step {step + 1} on, the batches differ from an "
                       "uninterrupted run's")
    return step, jax.device_put(state, self.replicated)

  # ---- memory ------------------------------------------------------------------------
  def _fit(self, what, field, compile_at, sizes, current, advice):
    budget = memory_fit.budget_bytes(float(self.config.memory_limit_gb))
    try:
      return memory_fit.fit(what, field, compile_at, sizes, current, budget,
                            self.config.memory_fit, advice, process_zero.log)
    except memory_fit.DoesNotFit as e:
      raise TrainingError(str(e)) from None

  def fitted_train_step(self, step_fn, state):
    """``step_fn`` compiled for micro-batches that fit (``config.memory_fit``: "split"
    raises ``grad_accum_steps``, keeping the global batch; "stop" names what fits; "off":
    compiled on the first step). Updates ``grad_accum_steps`` in the config."""
    if self.config.memory_fit == "off":
      return step_fn
    batch, devices = self.config.batch_size, jax.device_count()
    sizes = [m for m in range(devices, self.micro + 1, devices) if batch % m == 0]
    micro, compiled = self._fit(
        "train step", "grad_accum_steps",
        lambda micro: self.compile_train_step(step_fn, state, micro), sizes, self.micro,
        lambda m: f"--config.grad_accum_steps={batch // m} (micro-batches of {m})")
    self.micro, self.accum = micro, batch // micro
    self.config.grad_accum_steps = self.accum
    return compiled

  def compile_train_step(self, step_fn, state, micro: int):
    return ts.compile_train_step(step_fn, state, self.clip_shape, self.config.batch_size,
                                 micro, self.data_sharding)

  def fit_eval_forward(self, variables) -> None:
    """Compiles the eval forward for the largest eval batch that fits (as above)."""
    if self.config.memory_fit == "off":
      return
    devices = jax.device_count()
    self.eval_batch, self.eval_forward = self._fit(
        "evaluation forward", "eval_batch_size",
        lambda size: ts.compile_eval_forward(self.eval_forward, variables, self.clip_shape,
                                             size, self.replicated, self.eval_sharding),
        list(range(devices, self.eval_batch + 1, devices)), self.eval_batch,
        lambda b: f"--config.eval_batch_size={b}")

  # ---- data and evaluation -----------------------------------------------------------
  def train_iterator(self, start_step: int = 0) -> ip.TrainIterator:
    """The training batches from the one step ``start_step + 1`` consumes."""
    loader = ip.train_loader(self.train_source, self.config.batch_size // jax.process_count(),
                             clips_lib.clip_spec(self.config.clip, train=True),
                             seed=self.config.seed, worker_count=self.config.num_workers)
    return loader.iterator(start_step)

  def record_inputs(self, step: int, batch=None, state=None):
    """``config.record_inputs``: what each process read (and its parameters' digest)."""
    if self.config.get("record_inputs"):
      metric_log.record_inputs(
          self.workdir, step, None if batch is None else batch["video_index"].tolist(),
          None if state is None else checkpoint_lib.digest(state.params))

  def global_batch(self, batch) -> Tuple[jax.Array, jax.Array]:
    clips = batch["clips"].reshape((self.accum, -1) + batch["clips"].shape[1:])
    labels = batch["label"].reshape(self.accum, -1)
    shape = (self.accum, self.micro)
    return (jax.make_array_from_process_local_data(self.data_sharding, clips,
                                                   shape + clips.shape[2:]),
            jax.make_array_from_process_local_data(self.data_sharding, labels, shape))

  def evaluate(self, variables, desc="eval", stop: Optional[preemption.StopRequests] = None):
    """Video-level metrics of every eval view; None when ``stop`` reports a signal."""
    try:
      return eval_loop.evaluate(
          self.eval_forward, variables, self.eval_source, batch_size=self.eval_batch,
          spec=clips_lib.clip_spec(self.config.clip), sharding=self.eval_sharding,
          num_classes=len(self.class_names), worker_count=self.config.num_workers, desc=desc,
          stopped=None if stop is None else stop.agreed)
    except eval_loop.EmptySplit as e:
      raise TrainingError(str(e)) from None

  def write_eval(self, metrics: Dict[str, Any], step: int, split: str) -> str:
    """The metrics' files, ``workdir/eval_<split>_step<step>.*`` (process 0)."""
    base = os.path.join(self.workdir, f"eval_{split}_step{step}")
    if process_zero.is_main():
      evaluation.write_eval_files(metrics, base, self.class_names, step, split)
    return base


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints), then evaluates per video.
  The config and data are checked before ``workdir`` is created; the run holds its lock."""
  trainer = Trainer(config, workdir)
  os.makedirs(trainer.workdir, exist_ok=True)
  try:
    with workdir_lock.owned(trainer.workdir):
      return _train_and_evaluate(trainer, config, workdir)
  except workdir_lock.WorkdirInUseError as e:
    raise TrainingError(str(e)) from None


def _train_and_evaluate(trainer, config, workdir):
  with preemption.StopRequests() as stop:
    state, tx, _ = trainer.initial_state()
    step_fn = ts.make_train_step(trainer.model, tx, trainer.schedule, trainer.dtype,
                                 trainer.mesh)
    if config.memory_fit != "off":
      process_zero.log("compiling the train step and checking that it fits in memory...")
    step_fn = trainer.fitted_train_step(step_fn, state)
    trainer.fit_eval_forward({"params": state.params, "batch_stats": state.batch_stats})
    checkpoints = training_checkpoints.TrainingCheckpoints(trainer.workdir, config.keep_checkpoints)
    try:
      start, state = trainer.resume(checkpoints, state)
      if process_zero.is_main():  # once the checkpoints are known to fit this config
        with open(os.path.join(workdir, "config.json"), "w") as f:
          json.dump(config.to_dict(), f, indent=1)
      evaluated = {}  # step -> the periodic evaluation's metrics, this process
      try:
        state = train_loop.run(trainer, state, step_fn, checkpoints, start, stop, evaluated)
      except (train_loop.Diverged, checkpoint_lib.CheckpointError) as e:
        raise TrainingError(str(e)) from None
    finally:
      checkpoints.close()
    total = max(config.num_train_steps, start)
    final = train_loop.final_evaluation(trainer, state, total, evaluated, stop)
  train_loop.report_final(trainer, final, total)
  return final
