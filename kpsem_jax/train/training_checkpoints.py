"""A training workdir's checkpoints: one owner for its ``checkpoints/`` (the resume points,
with the optimizer state), ``best/`` and ``damaged/``, on top of the orbax I/O of
:mod:`kpsem_jax.train.checkpoint`.

    checkpoints = TrainingCheckpoints(workdir, keep=3)
    found = checkpoints.resume(variables, opt_state, model_spec, optimizer_differences)
    checkpoints.save(step, variables, opt_state, metadata)
"""

import os
import shutil
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from kpsem_jax import process_zero
from kpsem_jax.train.checkpoint import (ITEMS, CheckpointError, failure_reason,
                                        json_differences, model_differences, newest_intact,
                                        read_metadata, restore_variables, verify,
                                        with_checksums)


TRAINING_ITEMS = ("variables", "opt_state", "metadata")


class TrainingCheckpoints:
  """A training workdir's checkpoints, with every rule about them in one place.

  - ``checkpoints/``: the last ``keep`` steps with every item (the resume points);
  - ``best/``: the step with the best eval accuracy (variables and metadata);
  - ``damaged/``: steps that fail their checks, moved aside with a line each, never deleted.

  A save counts once it has committed: :meth:`save` checks the free space first, waits for
  orbax's write and, when it fails (a full disk), removes the partial step and raises one
  :class:`CheckpointError` naming the folder and the space needed; ``last_saved`` then
  still names the previous step, the resume point. Every process of a multi-host job calls
  every method (orbax coordinates the writes; process 0 moves folders and decides).
  """

  def __init__(self, workdir: str, keep: int, log: Callable[[str], None] = print):
    self.workdir = os.path.abspath(workdir)
    self.keep = keep
    self.log = log if process_zero.is_main() else (lambda message: None)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.best_directory = os.path.join(self.workdir, "best")
    self._open()
    self.last_saved: Optional[int] = None  # the newest step known intact and committed
    self._failed = []  # (directory, step) of saves that failed

  def _open(self) -> None:
    self.checkpoints = ocp.CheckpointManager(
        self.directory, item_names=TRAINING_ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep,
                                             cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        self.best_directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["accuracy"],
                                             best_mode="max", cleanup_tmp_directories=True))

  def close(self) -> None:
    if not self._failed:
      self.checkpoints.close()
      self.best.close()
      return
    _close_quietly(self.checkpoints)  # the failure was reported when it happened
    _close_quietly(self.best)
    for directory, step in self._failed:  # orbax's threads may have written on after
      _remove_partial(directory, step)
    self._failed = []

  # ---- resume ------------------------------------------------------------------------
  def resume(self, variables, opt_state, model: Mapping[str, Any],
             optimizer_differences: Optional[Callable[[Dict[str, Any]], list]] = None
             ) -> Optional[Tuple[int, Any, Any, Dict[str, Any]]]:
    """``(step, variables, opt_state, metadata)`` of the newest intact step, shaped and
    placed like the given trees, or None when there is none.

    A step written for another ``model`` (``create_model``'s keyword arguments), or whose
    metadata ``optimizer_differences`` finds other optimizer settings for (an optimizer
    state of another shape), raises :class:`CheckpointMismatch` naming the differences;
    nothing is moved. Damaged steps of
    ``checkpoints/`` and a damaged ``best/`` are skipped with a line saying which and why,
    then moved to ``damaged/``."""
    if self.checkpoints.latest_step() is None and not self.best.all_steps():
      return None

    def restore(step):
      where = os.path.join(self.directory, str(step))
      metadata = read_metadata(self.checkpoints, step, where)
      differences = model_differences(metadata.get("model"), model)
      if differences:
        raise CheckpointMismatch(
            f"{where} was written for another model ({'; '.join(differences)}): use a new "
            f"--workdir, or the config the run was trained with "
            f"({os.path.join(self.workdir, 'config.json')})")
      differences = optimizer_differences(metadata) if optimizer_differences else []
      if differences:
        raise CheckpointMismatch(
            f"{where} was written with other optimizer settings, whose state it holds "
            f"({'; '.join(differences)}): resume with the checkpoint's values (e.g. "
            f"--config.{differences[0].split(':')[0]}=...), or use a new --workdir")
      return restore_training(self.checkpoints, step, variables, opt_state, metadata) + (
          metadata,)

    step, restored, damaged = newest_intact(self.checkpoints, restore, self.log,
                                            fatal=(CheckpointMismatch,))
    best_damaged = self._damaged_best()
    if damaged or best_damaged:
      self.close()
      self._move_aside([(self.directory, s) for s in damaged]
                       + [(self.best_directory, s) for s in best_damaged])
      self._open()
    if restored is None:
      if damaged:
        self.log(f"no intact checkpoint in {self.directory}: training starts from step 0")
      return None
    self.last_saved = step
    return (step,) + tuple(restored)

  def _damaged_best(self) -> list:
    def restore(step):
      where = os.path.join(self.best_directory, str(step))
      return restore_variables(self.best, step, metadata=read_metadata(self.best, step, where))
    return newest_intact(self.best, restore, self.log)[2]

  def _move_aside(self, folders) -> None:
    """Moves each ``(directory, step)`` to ``workdir/damaged/`` (process 0; all wait)."""
    if process_zero.is_main():
      aside = os.path.join(self.workdir, "damaged")
      os.makedirs(aside, exist_ok=True)
      for directory, step in folders:
        kind = "best" if directory == self.best_directory else "checkpoint"
        target = os.path.join(aside, f"{kind}_{step}_{int(time.time())}")
        os.rename(os.path.join(directory, str(step)), target)
        self.log(f"moved the damaged {kind} step {step} to {target}")
    _sync("damaged checkpoints moved aside")

  # ---- saving ------------------------------------------------------------------------
  def save(self, step: int, variables, opt_state, metadata: Mapping[str, Any]) -> None:
    """Saves a training step (``variables``, ``opt_state``, ``metadata`` with both items'
    SHA-256) and waits until it has committed; see the class docstring for failures."""
    metadata = with_checksums(metadata, variables=variables, opt_state=opt_state)
    self._write(self.checkpoints, self.directory, step, _size(variables, opt_state),
                dict(args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(variables),
                    opt_state=ocp.args.StandardSave(opt_state),
                    metadata=ocp.args.JsonSave(metadata))))
    self.last_saved = step

  def save_best(self, step: int, accuracy: float, variables,
                metadata: Mapping[str, Any]) -> None:
    """Offers ``step`` to ``best/`` (kept if its ``accuracy`` is the best so far); a step
    it already holds (a resumed run evaluating it again) is left as it is."""
    if step in self.best.all_steps():
      return
    metadata = with_checksums(metadata, variables=variables)
    self._write(self.best, self.best_directory, step, _size(variables),
                dict(metrics={"accuracy": float(accuracy)}, args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(variables),
                    metadata=ocp.args.JsonSave(metadata))))

  def _write(self, manager, directory: str, step: int, size: int, kwargs) -> None:
    # The space a step takes: the last step's size on disk (compressed, with the file
    # system's blocks), else the arrays' bytes; either with a little room for metadata.
    newest = manager.latest_step()
    if newest is not None:
      size = _disk_usage(os.path.join(directory, str(newest))) or size
    needed = size + (256 << 10)
    free = _agreed_free_space(directory)
    if free is not None and free < needed:
      raise CheckpointError(self._write_failed(
          directory, step, "not enough free space",
          f"it needs about {_mb(needed)}, {_mb(free)} free"))
    existed = os.path.exists(os.path.join(directory, str(step)))
    try:
      manager.save(step, **kwargs)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
      _close_quietly(manager)
      _join_orbax_threads()  # its writers of the failed step may still be running
      if not existed:  # never a step that was there before this save
        _remove_partial(directory, step)
        self._failed.append((directory, step))
      free = _free_space(directory)
      raise CheckpointError(self._write_failed(
          directory, step, failure_reason(e),
          f"{_mb(free)} free there" if free is not None else "")) from None

  def _write_failed(self, directory, step, reason, space) -> str:
    resume = (f"it resumes from step {self.last_saved}" if self.last_saved is not None
              else "no checkpoint was written before it: it starts again from step 0")
    return (f"writing the checkpoint of step {step} to {directory} failed: {reason}"
            f"{f' ({space})' if space else ''}; free space or fix the folder, then rerun "
            f"the same command: {resume}")


class CheckpointMismatch(CheckpointError):
  """An intact checkpoint this run must not continue (written for another model)."""


# Config fields that decide the training batches (num_workers, the process count and where
# the data is stored do not).
DATA_FIELDS = ("seed", "batch_size", "dataset.name", "dataset.config", "dataset.train_split",
               "clip")


def data_changes(saved_config: Mapping, config: Mapping) -> list:
  """The differences of the ``DATA_FIELDS`` between a checkpoint's config and ``config``
  (both as dicts): a resume with any of them changes the batches from there on."""
  def get(tree, path):
    for key in path.split("."):
      tree = tree.get(key) if isinstance(tree, dict) else None
    return tree
  return [d for path in DATA_FIELDS
          for d in json_differences(get(saved_config, path), get(config, path),
                                    f"config.{path}")]


def _size(*trees) -> int:
  return sum(int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize
             for tree in trees for leaf in jax.tree.leaves(tree))


def _disk_usage(path: str) -> int:
  total = 0
  for root, _, names in os.walk(path):
    for name in names:
      try:
        total += os.lstat(os.path.join(root, name)).st_blocks * 512
      except OSError:
        pass
  return total


def _free_space(directory: str) -> Optional[int]:
  try:
    os.makedirs(directory, exist_ok=True)
    return shutil.disk_usage(directory).free
  except OSError:
    return None


def _agreed_free_space(directory: str) -> Optional[int]:
  """Process 0's view of the free space, the same on every process (one decision)."""
  free = _free_space(directory) if process_zero.is_main() else 0
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    free = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if free is None else free)))
    free = None if free < 0 else free
  return free


def _close_quietly(manager: ocp.CheckpointManager) -> None:
  """Closes a manager whose last save failed (orbax raises that failure again on close)."""
  try:
    manager.close()
  except Exception:  # pylint: disable=broad-except
    pass


def _join_orbax_threads(timeout: float = 60.0) -> None:
  """Waits (up to ``timeout`` seconds in all) for orbax's background threads to end."""
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
      try:
        thread.join(max(0.0, deadline - time.monotonic()))
      except Exception:  # pylint: disable=broad-except  # orbax's join re-raises its error
        pass


def _remove_partial(directory: str, step: int) -> None:
  """Removes what a failed save of ``step`` left: orbax's temporary folder, or the step's
  folder when the failure came after it was renamed into place (it does not count)."""
  if process_zero.is_main():
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
      if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _mb(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def restore_training(manager: ocp.CheckpointManager, step: int, variables, opt_state,
                     metadata: Mapping[str, Any]) -> Tuple[Any, Any]:
  """``(variables, opt_state)`` of ``step`` shaped and placed like the given trees (arrays
  or ``jax.ShapeDtypeStruct``s), each checked against ``metadata``'s SHA-256."""
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
  restored = manager.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract(variables)),
      opt_state=ocp.args.StandardRestore(abstract(opt_state))))
  where = os.path.join(str(manager.directory), str(step))
  for item in ("variables", "opt_state"):
    verify(item, restored[item], metadata, where)
  return restored["variables"], restored["opt_state"]
