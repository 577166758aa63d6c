"""Train and evaluate KPSEM models.

    python train.py --config=configs/hmdb51.py --workdir=workdirs/hmdb51 [--mode=train|eval]
        [--config.optimizer.lr=0.01 ...]

With no flags it runs the embedded default (configs/synthetic.py into workdirs/synthetic).
Rerunning the same command resumes from the workdir's latest checkpoint. Multi-host:
``jax.distributed.initialize()`` runs when JAX's coordinator settings are in the
environment (or --coordinator_address etc. are given); see the README.
"""

import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from kpsem_jax import input_pipeline, trainer

REPO = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "synthetic.py"),
                                "a configs/*.py file", lock_config=True)
flags.DEFINE_string("workdir", os.path.join(REPO, "workdirs", "synthetic"),
                    "checkpoints, metrics and evaluation results go here")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate), or only evaluate")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if FLAGS.coordinator_address or "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    if FLAGS.mode == "train":
      trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      trainer.evaluate(FLAGS.config, FLAGS.workdir)
  except (trainer.TrainingError, input_pipeline.DataNotPreparedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
