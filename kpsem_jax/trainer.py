"""Training and evaluation: one jitted, data-parallel train step over every device.

``train_and_evaluate(config, workdir)`` trains ``config`` (see ``configs/``) and evaluates it;
``evaluate_workdir(config, workdir)`` evaluates the best (else latest) checkpoint of a workdir.

- Devices: a 1-D ``Mesh`` over all devices of all processes; the train step and eval forward
  are ``jax.shard_map`` over its ``data`` axis, so each device computes its own shard
  (:func:`make_train_step`). Parameters and optimizer state are replicated; BatchNorm
  statistics are those of the global (micro-)batch. Each process reads its own contiguous
  slice of every global batch; the sequence of global batches depends on the seed only.
- Multi-host: the same program on every process (``jax.distributed``); checkpoints are
  written once (orbax coordinates the processes), logs and files by process 0, evaluation
  by every process on its share of the videos, gathered.
- Gradient accumulation: the global batch is ``grad_accum_steps`` micro-batches, scanned
  inside the jitted step.
- Checkpoints: :class:`kpsem_jax.checkpoint.TrainingCheckpoints` owns their rules (resume,
  committed saves, best, damaged steps); the data position is the step itself. Rerunning
  the same command resumes from the newest intact checkpoint, with the same batches. A
  NaN/inf loss stops the run with a clear error; the last good checkpoint stays. SIGTERM or
  SIGINT saves the step reached and raises :class:`kpsem_jax.preemption.Interrupted`. A run
  holds ``workdir/lock`` (one writer); the config is checked before anything runs.
- Logs: a progress bar (step, clips/s, loss, lr, ETA), ``metrics.jsonl`` and TensorBoard
  events in the workdir, the resolved config in ``config.json``.
"""

import contextlib
import importlib
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from configs import common
from data import atomic, usable_cores
from kpsem_jax import arese, layers
from kpsem_jax import checkpoint as checkpoint_lib
from kpsem_jax import evaluation
from kpsem_jax import input_pipeline as ip
from kpsem_jax import memory_fit
from kpsem_jax import metric_log
from kpsem_jax import preemption
from kpsem_jax import prepare as prepare_lib
from kpsem_jax.models import create_model
from kpsem_jax.optimizer import create_optimizer, lr_schedule, state_differences
from kpsem_jax.train_step import (DATA_AXIS, TrainState, cross_entropy, data_mesh,
                                  make_eval_forward, make_train_step)
from kpsem_jax.workdir_lock import WorkdirInUseError, WorkdirLock




def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """``get_config(arg)`` of ``configs/<name>.py`` (the ``configs`` package)."""
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg else module.get_config()


# The step and the optimizer live in train_step.py and optimizer.py; their names stay
# reachable here (trainer.make_train_step, ...), as before.
__all__ = ["DATA_AXIS", "TrainState", "TrainingError", "Trainer", "create_optimizer",
           "cross_entropy", "data_mesh", "evaluate_workdir", "load_config", "lr_schedule",
           "make_eval_forward", "make_train_step", "model_spec", "train_and_evaluate"]


class TrainingError(RuntimeError):
  """A run that cannot go on (divergence, bad batch geometry); the message says why."""


def model_spec(config) -> Dict[str, Any]:
  """``create_model``'s keyword arguments from a config. Fixed regions (``adaptive=False``)
  are drawn from ``config.seed`` unless ``model.kpsem.fixed_regions_seed`` says otherwise,
  so each training seed has its own fixed split."""
  m = config.model
  kpsem = dict(m.kpsem) if m.use_kpsem else None
  if kpsem is not None and not kpsem.get("adaptive", True):
    kpsem.setdefault("fixed_regions_seed", int(config.seed))
  spec = dict(backbone=m.backbone, num_classes=config.dataset.num_classes,
              backbone_kwargs=dict(m.backbone_kwargs), kpsem=kpsem, kpsem_at=m.kpsem_at)
  if m.get("readout", "mean") != "mean":  # absent from the metadata of mean-readout models
    spec["readout"] = m.readout
  return spec


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`TrainingError` naming every field its rule refuses (``configs/common.py``'s
  ``FIELDS``: a count below its minimum, nan or inf, a value not among its choices) and every
  model choice the model code does not know, one ``error:`` line each."""
  found = common.violations(config)
  m = config.model
  if m.conv_strategy not in layers.STRATEGIES:
    found.append(f"config.model.conv_strategy={m.conv_strategy!r}: choose one of "
                 f"{', '.join(layers.STRATEGIES)}")
  gradient = dict(m.kpsem).get("match_gradient", "splits")
  if m.use_kpsem and gradient not in arese.MATCH_GRADIENTS:
    found.append(f"config.model.kpsem.match_gradient={gradient!r}: choose one of "
                 f"{', '.join(arese.MATCH_GRADIENTS)}")
  if found:
    raise TrainingError("\nerror: ".join(found))


class Trainer:
  """Holds the mesh, model, optimizer, compiled steps and data sources of a run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    self.started = time.monotonic()  # metrics.jsonl's elapsed_s counts from here
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.mesh = data_mesh()
    self.replicated = jax.NamedSharding(self.mesh, jax.P())
    self.data_sharding = jax.NamedSharding(self.mesh, jax.P(None, DATA_AXIS))
    self.eval_sharding = jax.NamedSharding(self.mesh, jax.P(DATA_AXIS))
    self.accum = int(config.grad_accum_steps)
    self.micro = self._check_batch(config.batch_size, config.eval_batch_size)
    self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    self.class_names, self.train_source, self.eval_source = self._data()
    self._check_init_from()
    self.spec = model_spec(config)
    self.schedule = lr_schedule(config)
    self.model = create_model(**self.spec, conv_strategy=config.model.conv_strategy,
                              batch_norm_axis=DATA_AXIS)
    # Compiled once per run (not per evaluation): per-view float32 logits, replicated.
    self.eval_forward = make_eval_forward(self.model, self.dtype, self.mesh)
    self.eval_batch = int(config.eval_batch_size)

  def _check_batch(self, batch_size: int, eval_batch_size: int) -> int:
    devices = jax.device_count()
    if batch_size % self.accum:
      raise TrainingError(f"batch_size={batch_size} does not divide into "
                          f"grad_accum_steps={self.accum} micro-batches")
    micro = batch_size // self.accum
    for name, size in (("micro-batch (batch_size / grad_accum_steps)", micro),
                       ("eval_batch_size", eval_batch_size)):
      if size % devices:
        raise TrainingError(
            f"the {name} is {size}, which does not divide over the {devices} devices; "
            f"use a multiple of {devices}")
    return micro

  def _check_init_from(self) -> None:
    """A missing ``config.init_from`` is one error naming the command that creates it, and
    one that is not a checkpoint folder another (before the workdir exists)."""
    path = self.config.init_from
    if not path:
      return
    if os.path.exists(os.path.expanduser(path)):
      if not os.path.isdir(os.path.join(os.path.expanduser(path), "checkpoints")):
        raise TrainingError(
            f"config.init_from={path} is not a kpsem-jax checkpoint (no 'checkpoints' folder "
            "in it): name a folder written by python -m kpsem_jax.convert or a training "
            "workdir, or train from scratch with --config.init_from=")
      return
    m = self.config.model
    how = ""
    if m.backbone == "mfnet3d":
      how = (f"create it from the released MFNet with: python -m kpsem_jax.convert "
             f"--pytorch=MFNet3D_Kinetics-400_72.8.pth --output={path} --model="
             f"{'mf_kpsem' if m.use_kpsem else 'mfnet3d'} "
             f"--num_classes={self.config.dataset.num_classes} (docs/inference.md), or ")
    raise TrainingError(f"config.init_from={path} does not exist: {how}train from scratch "
                        "with --config.init_from=")

  def _data(self):
    d = self.config.dataset
    data_dir = os.path.expanduser(d.data_dir)
    if d.name not in prepare_lib.datasets():
      raise TrainingError(f"config.dataset.name={d.name!r} is not a dataset this project "
                          f"builds; choose one of {', '.join(prepare_lib.datasets())}")
    try:
      found = ip.dataset_dir(data_dir, d.name, d.config)
      if d.auto_prepare and ip.older_version(found, prepare_lib.builder_version(d.name)):
        raise ip.DataNotPreparedError(f"{found} is an older version")  # built anew below
    except ip.DataNotPreparedError:
      if not d.auto_prepare:
        raise
      if jax.process_index() == 0:
        print(f"preparing {d.name} ({d.config}) in {data_dir}")
        try:
          prepare_lib.prepare(d.name, data_dir, source_dir=d.get("source_dir") or None,
                              config=d.config, workers=usable_cores())
        except prepare_lib.PrepareError as e:
          raise TrainingError(str(e)) from None
      multihost_utils.sync_global_devices("dataset prepared")
    try:
      train, names = ip.load_source(data_dir, d.name, d.config, d.train_split)
      evals, _ = ip.load_source(data_dir, d.name, d.config, d.eval_split)
    except ValueError as e:  # a split the prepared data does not have
      raise TrainingError(f"config.dataset: {e}") from None
    if not d.num_classes:  # from the prepared metadata (video_folder)
      d.num_classes = len(names)
    if len(names) != d.num_classes:
      raise TrainingError(f"config.dataset.num_classes={d.num_classes} but {d.name} has "
                          f"{len(names)} classes")
    return names, train, evals

  # ---- state -------------------------------------------------------------------------
  def initial_state(self) -> Tuple[TrainState, optax.GradientTransformation, Any]:
    c = self.config.clip
    dummy = jnp.zeros((1, c.frames, c.crop, c.crop, 3), self.dtype)
    variables = jax.jit(self.model.init)(jax.random.PRNGKey(self.config.seed), dummy)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    pretrained = None
    if self.config.init_from:
      log = print if jax.process_index() == 0 else (lambda message: None)
      params, batch_stats, pretrained = checkpoint_lib.load_pretrained(
          self.config.init_from, params, batch_stats, log)
    tx = create_optimizer(self.config, pretrained, self.schedule)
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
    return jax.device_put(state, self.replicated), tx, pretrained

  def metadata(self, step: int) -> Dict[str, Any]:
    return checkpoint_lib.make_metadata(self.spec, self.config.clip.frames, self.class_names,
                                        step, self.config.to_dict(),
                                        process_count=jax.process_count())

  def resume(self, checkpoints: checkpoint_lib.TrainingCheckpoints, state: TrainState
             ) -> Tuple[int, TrainState]:
    """``(step, state)`` of the newest intact checkpoint (``(0, state)`` when there is none).

    The data position is the step itself (batch ``n`` is step ``n + 1``'s, the same for any
    number of processes and workers); a checkpoint written with other data settings
    (``DATA_FIELDS``) resumes with a line naming them, since its batches from here on
    differ from an uninterrupted run's. Damaged steps are moved aside by ``checkpoints``."""
    try:
      optimizer = self.config.optimizer.to_dict()
      found = checkpoints.resume(
          {"params": state.params, "batch_stats": state.batch_stats},
          {"opt_state": state.opt_state, "step": state.step}, self.spec,
          lambda metadata: state_differences(
              (metadata.get("config") or {}).get("optimizer") or {}, optimizer))
    except checkpoint_lib.CheckpointMismatch as e:  # another model: not damage
      raise TrainingError(str(e)) from None
    if found is None:
      return 0, state
    step, variables, opt_state, metadata = found
    state = TrainState(opt_state["step"], variables["params"], variables["batch_stats"],
                       opt_state["opt_state"])
    log = print if jax.process_index() == 0 else (lambda message: None)
    log(f"resuming from step {step} ({checkpoints.directory})")
    data_changes = _data_changes(metadata.get("config") or {}, self.config.to_dict())
    if data_changes:
      log(f"the data settings differ from the checkpoint's ({'; '.join(data_changes)}): "
          f"from step {step + 1} on, the batches differ from an uninterrupted run's")
    return step, jax.device_put(state, self.replicated)

  # ---- memory ------------------------------------------------------------------------
  def _budget(self) -> int:
    """One device's memory budget (``config.memory_limit_gb``, else what it has), the
    smallest over processes."""
    budget = memory_fit.budget_bytes(float(self.config.memory_limit_gb))
    if jax.process_count() > 1:
      budget = int(multihost_utils.process_allgather(np.int64(budget)).min())
    return budget

  def _fit(self, what: str, field: str, compile_at, sizes, current: int, advice) -> Tuple[int, Any]:
    """``(size, compiled)``: ``current`` if it fits, else (``config.memory_fit="split"``) the
    largest of ``sizes`` that does; ``"stop"``, or nothing fitting, is a
    :class:`TrainingError` naming the sizes."""
    budget = self._budget()
    try:
      size, compiled, need = memory_fit.largest_fitting(compile_at, sizes, budget)
    except memory_fit.DoesNotFit as e:
      raise TrainingError(
          f"the {what} does not fit in memory: {e} (config.{field}; "
          "config.memory_limit_gb sets the budget); lower config.clip.crop or "
          "config.clip.frames, or use a smaller model (configs/video_folder.py:small)"
      ) from None
    if size != current:
      if self.config.memory_fit == "stop":
        raise TrainingError(
            f"the {what} does not fit in memory with {current} clips (config.{field}); the "
            f"largest that fits the {memory_fit.describe(budget)} budget is {size}: "
            f"{advice(size)}, or --config.memory_fit=split to let the run do it")
      if jax.process_index() == 0:
        print(f"the {what} needs more than the {memory_fit.describe(budget)} a device has "
              f"with {current} clips; using {size} ({memory_fit.describe(need)}): "
              f"{advice(size)}")
    return size, compiled

  def fitted_train_step(self, step_fn, state):
    """``step_fn`` compiled for micro-batches that fit (``config.memory_fit``: "split"
    raises ``grad_accum_steps`` until the step fits, keeping the global batch and the lr
    schedule; BatchNorm statistics are then the smaller micro-batch's; "stop" names what
    fits; "off": compiled on the first step). Updates ``grad_accum_steps`` in the config."""
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
    """``step_fn`` compiled for the global batch in micro-batches of ``micro`` clips."""
    c, accum = self.config.clip, self.config.batch_size // micro
    clips = jax.ShapeDtypeStruct((accum, micro, c.frames, c.crop, c.crop, 3), jnp.uint8,
                                 sharding=self.data_sharding)
    labels = jax.ShapeDtypeStruct((accum, micro), jnp.int32, sharding=self.data_sharding)
    return step_fn.lower(state, clips, labels).compile()

  def fit_eval_forward(self, variables) -> None:
    """Compiles the eval forward for the largest eval batch that fits (``config.memory_fit``
    as for :meth:`fitted_train_step`; the results do not depend on it)."""
    if self.config.memory_fit == "off":
      return
    c, devices = self.config.clip, jax.device_count()
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=self.replicated), variables)

    def compile_at(size):
      clips = jax.ShapeDtypeStruct((size, c.frames, c.crop, c.crop, 3), jnp.uint8,
                                   sharding=self.eval_sharding)
      return self.eval_forward.lower(shapes, clips).compile()

    sizes = list(range(devices, self.eval_batch + 1, devices))
    self.eval_batch, compiled = self._fit(
        "evaluation forward", "eval_batch_size", compile_at, sizes, self.eval_batch,
        lambda b: f"--config.eval_batch_size={b}")
    self.eval_forward = compiled

  # ---- data --------------------------------------------------------------------------
  def train_iterator(self, start_step: int = 0) -> ip.TrainIterator:
    """The training batches from the one step ``start_step + 1`` consumes."""
    per_process = self.config.batch_size // jax.process_count()
    loader = ip.train_loader(self.train_source, per_process,
                             ip.clip_spec(self.config.clip, train=True),
                             seed=self.config.seed, worker_count=self.config.num_workers)
    return loader.iterator(start_step)

  def record_inputs(self, step: int, batch=None, state=None):
    """``config.record_inputs``: each process appends what it read (and, given ``state``,
    a digest of its parameters) to ``workdir/inputs/process_{i}.jsonl``."""
    if not self.config.get("record_inputs"):
      return
    os.makedirs(os.path.join(self.workdir, "inputs"), exist_ok=True)
    row = {"step": int(step), "process_count": jax.process_count()}
    if batch is not None:
      row["video_index"] = batch["video_index"].tolist()
    if state is not None:
      row["params_sha256"] = checkpoint_lib.digest(state.params)  # this process's copy
    with open(os.path.join(self.workdir, "inputs", f"process_{jax.process_index()}.jsonl"),
              "a") as f:
      f.write(json.dumps(row) + "\n")

  def global_batch(self, batch) -> Tuple[jax.Array, jax.Array]:
    clips = batch["clips"].reshape((self.accum, -1) + batch["clips"].shape[1:])
    labels = batch["label"].reshape(self.accum, -1)
    global_shape = (self.accum, self.micro)
    return (jax.make_array_from_process_local_data(self.data_sharding, clips,
                                                   global_shape + clips.shape[2:]),
            jax.make_array_from_process_local_data(self.data_sharding, labels, global_shape))

  # ---- evaluation --------------------------------------------------------------------
  def evaluate(self, variables, desc="eval", stop: Optional[preemption.StopRequests] = None
               ) -> Optional[Dict[str, Any]]:
    """Every view of every eval video -> video-level metrics (gathered over processes);
    None when ``stop`` (asked after each batch) reports a signal."""
    per_process = self.eval_batch // jax.process_count()
    spec = ip.clip_spec(self.config.clip)
    outputs = {"logits": [], "video_index": [], "label": [], "mask": []}
    batches = ip.eval_batches(self.eval_source, per_process, spec,
                              worker_count=self.config.num_workers)
    total = ip.eval_batch_count(len(self.eval_source), per_process, spec, jax.process_count())
    for batch in tqdm(batches, desc=desc, total=total, unit="batch", leave=False,
                      disable=jax.process_index() != 0):
      if stop is not None and stop.agreed():
        batches.close()
        return None
      x = jax.make_array_from_process_local_data(
          self.eval_sharding, batch["clips"],
          (self.eval_batch,) + batch["clips"].shape[1:])
      outputs["logits"].append(np.asarray(self.eval_forward(variables, x)))
      for key in ("video_index", "label", "mask"):
        local = batch[key]
        if jax.process_count() > 1:
          local = multihost_utils.process_allgather(local, tiled=True)
        outputs[key].append(np.asarray(local))
    if not outputs["logits"]:
      raise TrainingError("the eval split is empty")
    cat = {k: np.concatenate(v) for k, v in outputs.items()}
    keep = cat["mask"]
    return evaluation.video_metrics(cat["logits"][keep], cat["video_index"][keep],
                                    cat["label"][keep], len(self.class_names))

  def write_eval(self, metrics: Dict[str, Any], step: int, split: str) -> str:
    base = os.path.join(self.workdir, f"eval_{split}_step{step}")
    if jax.process_index() == 0:
      summary = {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}
      summary["per_class_accuracy"] = {
          name: (None if np.isnan(a) else float(a))
          for name, a in zip(self.class_names, metrics["per_class_accuracy"])}
      with open(base + ".json", "w") as f:
        json.dump(dict(summary, step=step, class_names=self.class_names), f, indent=1)
      np.savetxt(base + "_confusion.csv", metrics["confusion"], fmt="%d", delimiter=",")
      evaluation.confusion_png(metrics["confusion"], base + "_confusion.png", self.class_names,
                               title=f"{split} split, step {step}: confusion matrix")
    return base


# Config fields that decide the training batches (num_workers, the process count and where
# the data is stored do not).
DATA_FIELDS = ("seed", "batch_size", "dataset.name", "dataset.config", "dataset.train_split",
               "clip")


def _data_changes(saved_config, config) -> list:
  """The differences of the ``DATA_FIELDS`` between a checkpoint's config and this one."""
  def get(tree, path):
    for key in path.split("."):
      tree = tree.get(key) if isinstance(tree, dict) else None
    return tree
  return [d for path in DATA_FIELDS
          for d in checkpoint_lib.json_differences(get(saved_config, path),
                                                   get(config, path), f"config.{path}")]


@contextlib.contextmanager
def workdir_owned(workdir: str):
  """Holds ``workdir``'s lock for this job (process 0 takes it; every process stops with a
  :class:`TrainingError` naming the holder when another run has it)."""
  lock, error = None, ""
  if jax.process_index() == 0:
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
    raise TrainingError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints), then evaluates per video.

  The config and data are checked before ``workdir`` is created; the run holds its lock.
  """
  trainer = Trainer(config, workdir)
  os.makedirs(trainer.workdir, exist_ok=True)
  with workdir_owned(trainer.workdir):
    return _train_and_evaluate(trainer, config, workdir)


def _train_and_evaluate(trainer, config, workdir):
  with preemption.StopRequests() as stop:
    state, tx, _ = trainer.initial_state()
    step_fn = make_train_step(trainer.model, tx, trainer.schedule, trainer.dtype, trainer.mesh)
    if jax.process_index() == 0 and config.memory_fit != "off":
      print("compiling the train step and checking that it fits in memory...")
    step_fn = trainer.fitted_train_step(step_fn, state)
    trainer.fit_eval_forward({"params": state.params, "batch_stats": state.batch_stats})
    checkpoints = checkpoint_lib.TrainingCheckpoints(trainer.workdir, config.keep_checkpoints)
    try:
      start, state = trainer.resume(checkpoints, state)
      if jax.process_index() == 0:  # once the checkpoints are known to fit this config
        with open(os.path.join(workdir, "config.json"), "w") as f:
          json.dump(config.to_dict(), f, indent=1)
      evaluated = {}  # step -> the periodic evaluation's metrics, this process
      state = _train(trainer, config, state, step_fn, checkpoints, start, stop, evaluated)
    finally:
      checkpoints.close()
    total = max(config.num_train_steps, start)
    trainer.record_inputs(total, state=state)
    final = evaluated.get(total)  # the last periodic evaluation, when it was of this step
    if final is None:
      final = trainer.evaluate({"params": state.params, "batch_stats": state.batch_stats},
                               desc="final eval", stop=stop)
    if final is None:
      raise preemption.Interrupted(
          f"interrupted during the final evaluation; step {total} is saved; rerun the same "
          "command to evaluate it", stop.signum)
  base = trainer.write_eval(final, total, config.dataset.eval_split)
  # a rerun replaces the final rows
  writer = metric_log.MetricWriter(workdir, resume_step=total, started=trainer.started)
  writer.write(total, "final", final)
  if jax.process_index() == 0:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(base + "_confusion.png") as picture:
      writer.image(total, f"{config.dataset.eval_split}/confusion", np.asarray(picture.convert("RGB")))
  writer.close()
  if jax.process_index() == 0:
    print(f"final {config.dataset.eval_split}: video top-1 {final['video_top1']:.4f}, top-5 "
          f"{final['video_top5']:.4f}, clip top-1 {final['clip_top1']:.4f} over "
          f"{final['num_videos']} videos; details in {base}.json")
  return final


def _train(trainer, config, state, step_fn, checkpoints, start, stop, evaluated=None):
  """Steps ``start + 1 .. num_train_steps``: logs, evaluations (each kept in ``evaluated``
  by step), checkpoints; on SIGTERM or SIGINT saves the step reached and raises
  :class:`preemption.Interrupted`."""
  total = config.num_train_steps
  log = print if jax.process_index() == 0 else (lambda message: None)
  if start >= total:
    log(f"{trainer.workdir} is already at step {start} (config.num_train_steps={total}): "
        f"nothing to train; evaluating step {start}")
    return state

  def save(step):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    opt_state = {"opt_state": state.opt_state, "step": state.step}
    try:
      checkpoints.save(step, variables, opt_state, trainer.metadata(step))
    except checkpoint_lib.CheckpointError as e:
      raise TrainingError(str(e)) from None

  def stop_requested(step, metrics=None, asked=True):
    signum = stop.agreed() if asked else stop.signum
    if signum is None:
      return
    bar.close()
    kept = "saved" if step else "nothing was trained yet"
    if checkpoints.last_saved != step and step > start:
      loss = float(jax.device_get(metrics["loss"]))  # read only once a signal came
      if diverged(metrics) is None:
        save(step)
      else:  # never checkpoint a diverged state
        kept = (f"not saved ({diverged(metrics)}); the last good checkpoint is step "
                f"{checkpoints.last_saved}")
    raise preemption.Interrupted(
        f"interrupted at step {step}; {kept}; rerun the same command to resume", signum)

  iterator = trainer.train_iterator(start)
  writer = metric_log.MetricWriter(trainer.workdir, resume_step=start, started=trainer.started)
  # The bar opens after the first step, whose compilation would otherwise fill its ETA.
  bar = tqdm(total=total, initial=start, desc="train", disable=True)
  last_time, last_step = time.perf_counter(), start
  waited = 0.0  # seconds spent waiting for batches since the last logged step
  try:
    stop_requested(start)
    for step in range(start + 1, total + 1):
      before = time.perf_counter()
      batch = next(iterator)
      waited += time.perf_counter() - before
      trainer.record_inputs(step, batch)
      clips, labels = trainer.global_batch(batch)
      if step == start + 1:
        if config.memory_fit == "off":
          log("compiling the train step (the first step takes the compilation's time)...")
        state, metrics = step_fn(state, clips, labels)
        jax.block_until_ready(metrics["loss"])
        bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True,
                   disable=jax.process_index() != 0)
      else:
        state, metrics = step_fn(state, clips, labels)
        bar.update(1)
      if step % config.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        if diverged(metrics) is not None:
          bar.close()
          last = checkpoints.last_saved
          where = ("no checkpoint was written before it" if last is None else
                   f"the last good checkpoint is step {last} in {checkpoints.directory}")
          raise TrainingError(
              f"{diverged(metrics)} at step {step}; stopping: {where} "
              "(lower config.optimizer.lr, or check the data)")
        now = time.perf_counter()
        rate = (step - last_step) * config.batch_size / (now - last_time)
        data_wait = waited / (now - last_time)  # the share of the time the step waited
        last_time, last_step, waited = now, step, 0.0
        logged = {k: v for k, v in metrics.items() if k != "params_finite"}
        writer.write(step, "train", dict(logged, clips_per_second=rate, data_wait=data_wait))
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2g}",
                        clips_s=f"{rate:.1f}")
      if step % config.eval_every == 0 or step == total:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        m = trainer.evaluate(variables, desc=f"eval@{step}", stop=stop)
        if m is None:  # abandoned on a stop request
          stop_requested(step, metrics, asked=False)
        writer.write(step, "eval", m)
        if evaluated is not None:
          evaluated[step] = m
        try:
          checkpoints.save_best(step, m["video_top1"], variables, trainer.metadata(step))
        except checkpoint_lib.CheckpointError as e:
          raise TrainingError(str(e)) from None
        bar.write(f"step {step}: eval video top-1 {m['video_top1']:.4f}, clip top-1 "
                  f"{m['clip_top1']:.4f} ({m['num_videos']} videos)")
      if step % config.checkpoint_every == 0 or step == total:
        if diverged(jax.device_get(metrics)) is not None:
          bar.close()
          last = checkpoints.last_saved
          where = ("no checkpoint was written before it" if last is None else
                   f"the last good checkpoint is step {last} in {checkpoints.directory}")
          raise TrainingError(f"{diverged(jax.device_get(metrics))} at step {step}; "
                              f"stopping: {where} (lower config.optimizer.lr, or check the "
                              "data)")
        save(step)
      stop_requested(step, metrics)
  finally:
    iterator.close()  # its worker processes
    writer.close()
    bar.close()
  return state


def diverged(metrics) -> Optional[str]:
  """Why a step's state must not be kept (``"the loss became nan"``, ``"a parameter became
  non-finite"``), or None for a finite loss and finite parameters."""
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    return f"the loss became {loss}"
  if float(metrics.get("params_finite", 1.0)) < 1.0:
    return "a parameter became non-finite"
  return None


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Evaluates the best (else the latest) checkpoint of ``workdir`` per video."""
  trainer = Trainer(config, workdir)
  log = print if jax.process_index() == 0 else (lambda message: None)
  try:
    variables, metadata = checkpoint_lib.load_variables(trainer.workdir, prefer_best=True,
                                                        log=log)
  except (FileNotFoundError, checkpoint_lib.CheckpointError) as e:
    raise TrainingError(f"{workdir} holds no checkpoint to evaluate: {e}") from None
  differences = checkpoint_lib.model_differences(metadata.get("model"), trainer.spec)
  if differences:
    raise TrainingError(
        f"{workdir} holds a checkpoint of another model ({'; '.join(differences)}): evaluate "
        f"it with the config it was trained with ({os.path.join(workdir, 'config.json')})")
  step, path = metadata.get("step", 0), trainer.workdir
  if jax.process_index() == 0:  # the results are written there: fail now, not after
    atomic.check_writable(trainer.workdir)
  variables = jax.device_put(variables, trainer.replicated)
  trainer.fit_eval_forward(variables)
  metrics = trainer.evaluate(variables)
  with workdir_owned(trainer.workdir):  # one writer of the workdir's files
    base = trainer.write_eval(metrics, step, config.dataset.eval_split)
  if jax.process_index() == 0:
    print(f"{path} step {step} on {config.dataset.eval_split}: video top-1 "
          f"{metrics['video_top1']:.4f}, top-5 {metrics['video_top5']:.4f}; details in "
          f"{base}.json")
  return metrics
