"""Model checkpoints on disk: orbax items ``variables`` (params, batch_stats) and ``metadata``.

The metadata JSON holds ``model``, the keyword arguments of
:func:`kpsem_jax.models.create_model`, so a checkpoint rebuilds its own network; the
converter also records the source file, its sha256 and what was converted. Writes go to a
temporary sibling folder renamed into place, so an interrupted write leaves nothing behind.
"""

import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("variables", "metadata")


def manager_for(path: str) -> ocp.CheckpointManager:
  """A read-only view of the ``variables`` and ``metadata`` items of an orbax folder."""
  return ocp.CheckpointManager(path, item_handlers={
      "variables": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()})


def restore_variables(manager: ocp.CheckpointManager, step: int,
                      sharding: Optional[jax.sharding.Sharding] = None) -> Dict:
  """The ``variables`` of ``step`` placed with ``sharding`` (default: this process's first
  device), whatever devices and processes wrote them."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          manager.item_metadata(step)["variables"])
  restored = manager.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract)))
  return dict(restored["variables"])


def save_variables(directory: str, variables: Mapping, metadata: Mapping[str, Any],
                   overwrite: bool = False) -> None:
  """Writes ``variables`` and ``metadata`` as step 0 of an orbax checkpoint in ``directory``."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    variables = jax.tree.map(np.asarray, dict(variables))
    with ocp.CheckpointManager(os.path.join(tmp, "checkpoints"), item_names=ITEMS) as manager:
      manager.save(0, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                              metadata=ocp.args.JsonSave(dict(metadata))))
      manager.wait_until_finished()
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.rename(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def load_variables(directory: str, prefer_best: bool = False) -> Tuple[Dict, Dict[str, Any]]:
  """``(variables, metadata)`` from the newest step of ``directory/checkpoints`` (a converted
  checkpoint or a training workdir); ``prefer_best``: a workdir's ``best/`` if it has one."""
  directory = os.path.abspath(directory)
  path = os.path.join(directory, "checkpoints")
  best = os.path.join(directory, "best")
  if prefer_best and os.path.isdir(best):
    with manager_for(best) as probe:
      if probe.latest_step() is not None:
        path = best
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{directory} holds no kpsem-jax checkpoint (no 'checkpoints' folder)")
  with manager_for(path) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{path} holds no complete checkpoint step")
    variables = restore_variables(manager, step)
    metadata = manager.restore(step, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore()))["metadata"]
  return variables, dict(metadata)
