"""One pass of a compiled eval forward over every view of an eval split, on every process,
gathered into video-level metrics.

    metrics = eval_loop.evaluate(forward, variables, source, batch_size=32, spec=spec,
                                 sharding=sharding, num_classes=51)
"""

from typing import Any, Callable, Dict, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from kpsem_jax import process_zero
from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import input_pipeline as ip
from kpsem_jax.train import evaluation


class EmptySplit(ValueError):
  """The eval split holds no video."""


def evaluate(forward: Callable, variables, source, *, batch_size: int, spec: clips_lib.ClipSpec,
             sharding: jax.NamedSharding, num_classes: int, worker_count: int = 0,
             desc: str = "eval", stopped: Optional[Callable[[], Any]] = None
             ) -> Optional[Dict[str, Any]]:
  """Every view of every video of ``source`` -> :func:`evaluation.video_metrics`, gathered
  over processes (each reads ``batch_size / process_count`` views a batch; ``forward`` maps
  ``(variables, clips (batch_size, T, H, W, 3) uint8)`` to logits). None when ``stopped()``
  (asked after each batch) says so."""
  per_process = batch_size // jax.process_count()
  outputs = {"logits": [], "video_index": [], "label": [], "mask": []}
  batches = ip.eval_batches(source, per_process, spec, worker_count=worker_count)
  total = ip.eval_batch_count(len(source), per_process, spec, jax.process_count())
  for batch in tqdm(batches, desc=desc, total=total, unit="batch", leave=False,
                    disable=not process_zero.is_main()):
    if stopped is not None and stopped():
      batches.close()
      return None
    x = jax.make_array_from_process_local_data(sharding, batch["clips"],
                                               (batch_size,) + batch["clips"].shape[1:])
    outputs["logits"].append(np.asarray(forward(variables, x)))
    for key in ("video_index", "label", "mask"):
      local = batch[key]
      if jax.process_count() > 1:
        local = multihost_utils.process_allgather(local, tiled=True)
      outputs[key].append(np.asarray(local))
  if not outputs["logits"]:
    raise EmptySplit("the eval split is empty")
  cat = {k: np.concatenate(v) for k, v in outputs.items()}
  keep = cat["mask"]
  return evaluation.video_metrics(cat["logits"][keep], cat["video_index"][keep],
                                  cat["label"][keep], num_classes)
