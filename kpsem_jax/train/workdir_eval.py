"""Evaluating a training workdir's best (else latest) checkpoint: ``train.py --mode=eval``.

    metrics = workdir_eval.evaluate_workdir(config, "workdirs/hmdb51")
"""

import os
from typing import Any, Dict

import jax
import ml_collections

from kpsem_jax import atomic
from kpsem_jax import process_zero, workdir_lock
from kpsem_jax.train import checkpoint as checkpoint_lib
from kpsem_jax.train.trainer import Trainer, TrainingError


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Evaluates the best (else the latest) checkpoint of ``workdir`` per video."""
  trainer = Trainer(config, workdir)
  try:
    variables, metadata = checkpoint_lib.load_variables(trainer.workdir, prefer_best=True,
                                                        log=process_zero.log)
  except (FileNotFoundError, checkpoint_lib.CheckpointError) as e:
    raise TrainingError(f"{workdir} holds no checkpoint to evaluate: {e}") from None
  differences = checkpoint_lib.model_differences(metadata.get("model"), trainer.spec)
  if differences:
    raise TrainingError(
        f"{workdir} holds a checkpoint of another model ({'; '.join(differences)}): evaluate "
        f"it with the config it was trained with ({os.path.join(workdir, 'config.json')})")
  step = metadata.get("step", 0)
  if process_zero.is_main():  # the results are written there: fail now, not after
    atomic.check_writable(trainer.workdir)
  variables = jax.device_put(variables, trainer.replicated)
  trainer.fit_eval_forward(variables)
  metrics = trainer.evaluate(variables)
  try:
    with workdir_lock.owned(trainer.workdir):  # one writer of the workdir's files
      base = trainer.write_eval(metrics, step, config.dataset.eval_split)
  except workdir_lock.WorkdirInUseError as e:
    raise TrainingError(str(e)) from None
  process_zero.log(f"{trainer.workdir} step {step} on {config.dataset.eval_split}: video "
                   f"top-1 {metrics['video_top1']:.4f}, top-5 {metrics['video_top5']:.4f}; "
                   f"details in {base}.json")
  return metrics
