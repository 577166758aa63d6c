"""Model checkpoints on disk: orbax items ``variables`` (params, batch_stats) and ``metadata``.

The metadata JSON holds ``model``, the keyword arguments of
:func:`kpsem_jax.models.classifier.create_model`, so a checkpoint rebuilds its own network; the
converter also records the source file, its sha256 and what was converted. Writes go to a
temporary sibling folder renamed into place, so an interrupted write leaves nothing behind.

A training workdir's checkpoints (resume, best, damaged steps) are
:mod:`kpsem_jax.train.training_checkpoints`' on top of these.

Integrity: ``metadata["sha256"]`` holds, per saved item, the SHA-256 of its arrays (paths,
dtypes, shapes and bytes, in tree order), computed at save time; every load recomputes and
compares it. A damaged or unreadable step is skipped for the next older intact one, with a
line saying which and why.
"""

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from kpsem_jax.models.classifier import complete_spec

ITEMS = ("variables", "metadata")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message names the folder and why."""


def digest(tree) -> str:
  """SHA-256 of a tree of arrays: each leaf's path, dtype, shape and bytes, in tree order.

  Sharded or replicated ``jax.Array`` leaves are read from this process's first shard
  (replicated values: the whole array)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    h.update(array.tobytes())
  return h.hexdigest()


def verify(item: str, tree, metadata: Mapping[str, Any], where: str) -> None:
  """Raises :class:`CheckpointError` when ``tree`` does not hash to what was saved."""
  saved = (metadata.get("sha256") or {}).get(item)
  if saved is None:
    return  # written before checksums existed
  if digest(tree) != saved:
    raise CheckpointError(f"{where}/{item} is corrupt: its SHA-256 differs from the one "
                          "written with it")


def model_differences(saved: Any, model: Mapping[str, Any]) -> list:
  """``["model.x: checkpoint A, config B", ...]`` between a checkpoint's ``model`` metadata
  and ``create_model``'s keyword arguments, the backbone's defaults written out on both
  sides (a checkpoint that left them unsaid is the same model)."""
  if isinstance(saved, dict):
    saved = json.loads(json.dumps(complete_spec(saved)))
  return json_differences(saved, complete_spec(model))


def metadata_digest(metadata: Mapping[str, Any]) -> str:
  """SHA-256 of the metadata's JSON (keys sorted), its ``sha256`` field left out."""
  fields = {k: v for k, v in metadata.items() if k != "sha256"}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def with_checksums(metadata: Mapping[str, Any], **items) -> Dict[str, Any]:
  """``metadata`` with ``sha256``: each item's :func:`digest` and the metadata's own."""
  sums = {name: digest(tree) for name, tree in items.items()}
  sums["metadata"] = metadata_digest(metadata)
  return dict(metadata, sha256=sums)


def read_metadata(manager: ocp.CheckpointManager, step: int, where: str) -> Dict[str, Any]:
  """The ``metadata`` item of ``step``; a damaged one is a :class:`CheckpointError`."""
  path = os.path.join(where, "metadata", "metadata")
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise CheckpointError(f"{path} is empty (0 bytes)")
  try:
    metadata = manager.restore(step, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore()))["metadata"]
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
    raise CheckpointError(f"{path} cannot be read ({failure_reason(e)})") from None
  if not isinstance(metadata, Mapping):
    raise CheckpointError(f"{path} is not a JSON object")
  saved = (metadata.get("sha256") or {}).get("metadata")  # absent before 2026-12-03
  if saved is not None and saved != metadata_digest(metadata):
    raise CheckpointError(f"{path} does not match its SHA-256 (changed after it was written)")
  problem = metadata_problem(metadata)
  if problem:
    raise CheckpointError(f"{path} {problem}")
  return dict(metadata)


def metadata_problem(metadata: Mapping[str, Any]) -> Optional[str]:
  """What makes a checkpoint's metadata unusable (a required field missing or of the wrong
  kind, class names that do not match the classifier's width), or None."""
  model = metadata.get("model")
  if not isinstance(model, Mapping) or not isinstance(model.get("backbone"), str):
    return "has no model description (model.backbone)"
  classes = model.get("num_classes")
  if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
    return f"has no usable model.num_classes ({classes!r})"
  if not isinstance(metadata.get("frames"), int) or metadata["frames"] < 1:
    return f"has no usable clip frames ({metadata.get('frames')!r})"
  names = metadata.get("class_names")
  if names is not None and (not isinstance(names, list) or len(names) != classes
                            or not all(isinstance(n, str) for n in names)):
    count = len(names) if isinstance(names, list) else "no list of"
    return f"names {count} classes for a classifier of {classes}"
  return None


def newest_intact(manager: ocp.CheckpointManager, restore: Callable[[int], Any],
                  log: Callable[[str], None], fatal: Tuple[type, ...] = ()
                  ) -> Tuple[Optional[int], Any, Sequence[int]]:
  """``(step, restore(step), damaged steps)`` for the newest step ``restore`` can read.

  ``restore`` raises :class:`CheckpointError` (or any error of orbax's) for a damaged
  step; each skipped step gets a line through ``log``. ``(None, None, damaged)`` when none
  is intact. Errors of the ``fatal`` types propagate (not damage: e.g. another model)."""
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore(step), damaged
    except fatal:
      raise
    except CheckpointError as e:
      reason = str(e)
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
      reason = (f"{os.path.join(str(manager.directory), str(step))} cannot be read "
                f"({failure_reason(e)})")
    log(f"skipping checkpoint step {step}: {reason}")
    damaged.append(step)
  return None, None, damaged


def manager_for(path: str) -> ocp.CheckpointManager:
  """A read-only view of the ``variables`` and ``metadata`` items of an orbax folder."""
  return ocp.CheckpointManager(path, item_handlers={
      "variables": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()})


def restore_variables(manager: ocp.CheckpointManager, step: int,
                      sharding: Optional[jax.sharding.Sharding] = None,
                      metadata: Optional[Mapping[str, Any]] = None) -> Dict:
  """The ``variables`` of ``step`` placed with ``sharding`` (default: this process's first
  device), whatever devices and processes wrote them; checked against ``metadata``'s
  SHA-256 when given."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          manager.item_metadata(step)["variables"])
  restored = manager.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract)))
  variables = dict(restored["variables"])
  if metadata is not None:
    verify("variables", variables, metadata, os.path.join(str(manager.directory), str(step)))
  return variables


def save_variables(directory: str, variables: Mapping, metadata: Mapping[str, Any],
                   overwrite: bool = False) -> None:
  """Writes ``variables`` and ``metadata`` as step 0 of an orbax checkpoint in ``directory``."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise FileExistsError(f"{directory} is a file, not a folder; choose another output path")
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{os.path.basename(directory)}.tmp-"
  _remove_abandoned(parent, prefix)
  tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the result private
  try:
    variables = jax.tree.map(np.asarray, dict(variables))
    metadata = with_checksums(metadata, variables=variables)
    with ocp.CheckpointManager(os.path.join(tmp, "checkpoints"), item_names=ITEMS) as manager:
      manager.save(0, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                              metadata=ocp.args.JsonSave(metadata)))
      manager.wait_until_finished()
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.rename(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def _remove_abandoned(parent: str, prefix: str) -> None:
  """Removes ``prefix<pid>-*`` folders of writers that are gone (a killed conversion)."""
  for name in os.listdir(parent):
    if not name.startswith(prefix):
      continue
    pid = name[len(prefix):].split("-", 1)[0]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def non_finite_leaves(tree) -> list:
  """The paths (``params/classifier/kernel``) of the floating-point arrays of ``tree`` that
  hold a NaN or an infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
      bad.append("/".join(str(getattr(k, "key", k)) for k in path))
  return bad


def load_variables(directory: str, prefer_best: bool = False,
                   log: Optional[Callable[[str], None]] = None) -> Tuple[Dict, Dict[str, Any]]:
  """``(variables, metadata)`` of the newest intact step of ``directory/checkpoints`` (a
  converted checkpoint or a training workdir); ``prefer_best``: a workdir's ``best/`` first.

  A damaged step (unreadable, or its SHA-256 differs) is skipped for the next one, down to
  ``checkpoints/``'s oldest, with a line through ``log`` (default: stderr) saying which and
  why. Raises FileNotFoundError when there is no checkpoint, :class:`CheckpointError` when
  none is intact.
  """
  log = log or (lambda message: print(message, file=sys.stderr))
  directory = os.path.abspath(directory)
  folders = [os.path.join(directory, "best")] if prefer_best else []
  folders.append(os.path.join(directory, "checkpoints"))
  folders = [f for f in folders if os.path.isdir(f)]
  if not folders:
    raise FileNotFoundError(f"{directory} holds no kpsem-jax checkpoint (no 'checkpoints' folder)")
  reasons = []
  for path in folders:
    with manager_for(path) as manager:
      def restore(step, manager=manager, path=path):
        where = os.path.join(path, str(step))
        metadata = read_metadata(manager, step, where)
        return restore_variables(manager, step, metadata=metadata), metadata
      step, found, damaged = newest_intact(manager, restore, log)
    if found is not None:
      if reasons or damaged:
        log(f"using {os.path.join(path, str(step))} instead")
      bad = non_finite_leaves(found[0])
      if bad:
        raise CheckpointError(
            f"{os.path.join(path, str(step))} holds non-finite values in {len(bad)} "
            f"tensor(s) (e.g. {bad[0]}): it cannot be used; train again from a finite "
            "checkpoint")
      return found
    reasons.extend(f"{path}/{s}" for s in damaged)
  if not reasons:
    raise FileNotFoundError(f"{directory} holds no complete checkpoint step")
  raise CheckpointError(f"no intact checkpoint in {directory} (damaged: {', '.join(reasons)})")


FORMAT = "kpsem-jax/1"


def make_metadata(model: Mapping[str, Any], frames: int, class_names, step: int = 0,
                  config: Optional[Mapping[str, Any]] = None, **extra) -> Dict[str, Any]:
  """The one metadata format of every checkpoint: ``model`` (``create_model``'s keyword
  arguments), clip ``frames``, ``class_names`` (None: not known, as after a conversion),
  ``step``, the run's ``config`` and any ``extra`` fields (a conversion's source)."""
  return dict(format=FORMAT, model=dict(model), frames=int(frames),
              class_names=None if class_names is None else list(class_names),
              step=int(step), config=dict(config or {}), **extra)


def failure_reason(e: BaseException) -> str:
  """The innermost cause of an (orbax/TensorStore) error, on one line, the file it names
  kept and TensorStore's spec dumps cut."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror}{f': {e.filename}' if e.filename else ''}"
  text = str(e).split(" See full TensorStore details")[0].split(" [tensorstore_spec=")[0]
  text = " ".join(text.split())
  code = re.search(r"os_error_code='(\d+)'", str(e))
  if code:  # an operating-system error inside TensorStore: say which, and the file
    files = re.findall(r'local file "([^"]+)"', text)
    return f"{os.strerror(int(code.group(1)))}{f': {files[-1]}' if files else ''}"
  if not text or text.isdigit():  # a bare KeyError(0) and the like: say what it is
    return f"{type(e).__name__}{f': {text}' if text else ''}"
  return text[:600]










def json_differences(saved, wanted, prefix="model") -> list:
  """``["model.x.y: checkpoint A, config B", ...]`` where two JSON-like trees differ
  (``wanted`` is compared as its JSON form: tuples as lists)."""
  def differences(saved, wanted, prefix):
    if isinstance(saved, dict) and isinstance(wanted, dict):
      return [d for k in sorted(set(saved) | set(wanted), key=str)
              for d in differences(saved.get(k), wanted.get(k), f"{prefix}.{k}")]
    return [] if saved == wanted else [f"{prefix}: checkpoint {saved}, config {wanted}"]
  return differences(saved, json.loads(json.dumps(wanted)), prefix)






















def load_pretrained(path: str, params, batch_stats, log: Callable[[str], None] = print):
  """``(params, batch_stats, pretrained mask)``: the tensors of checkpoint ``path`` whose
  path and shape match, the given (fresh) ones elsewhere; the mask marks loaded params.

  A converted checkpoint lists what it converted; its freshly initialised parts (classifier,
  KPSEM) are not loaded. A training checkpoint is used whole."""
  loaded, meta = load_variables(path)
  counts = {"loaded": 0, "kept": 0}
  converted = set(meta.get("converted_paths") or ()) or None

  def merge(fresh, source, collection):
    flat_source = traverse_util.flatten_dict(source)
    out, mask = {}, {}
    for key, value in traverse_util.flatten_dict(fresh).items():
      got = flat_source.get(key)
      use = (got is not None and tuple(got.shape) == tuple(value.shape)
             and (converted is None or "/".join((collection,) + key) in converted))
      out[key] = jax.numpy.asarray(got) if use else value
      mask[key] = use
      counts["loaded" if use else "kept"] += 1
    return traverse_util.unflatten_dict(out), traverse_util.unflatten_dict(mask)

  params, pretrained = merge(params, loaded.get("params", {}), "params")
  batch_stats, _ = merge(batch_stats, loaded.get("batch_stats", {}), "batch_stats")
  log(f"init_from {path} ({meta.get('source', '?')}): {counts['loaded']} tensors loaded, "
      f"{counts['kept']} initialised fresh")
  return params, batch_stats, pretrained
