"""Train and evaluate KPSEM models.

    python train.py --config=configs/hmdb51.py --workdir=workdirs/hmdb51 [--mode=train|eval]
        [--config.optimizer.lr=0.01 ...]

With no flags it runs the embedded default (configs/synthetic.py into workdirs/synthetic).
Rerunning the same command resumes from the workdir's latest checkpoint.

Multi-host (docs/training.md, "Several hosts"): run the same command on every host with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I (or JAX_COORDINATOR_ADDRESS
in the environment), or --distributed alone where JAX detects the cluster (SLURM, Open MPI,
Kubernetes). If a process dies, the others stop within --heartbeat_timeout seconds.
"""

import os
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from kpsem_jax import cli
from kpsem_jax import config_base
from kpsem_jax.data import frames
from kpsem_jax.data import video_source
from kpsem_jax.train import checkpoint, trainer, workdir_eval

REPO = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS


def define_flags():
  """The flags; ``--config`` is read (and its ``--config.*`` overrides applied) here."""
  try:
    config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "synthetic.py"),
                                    "a configs/*.py file", lock_config=True)
  except (OSError, SyntaxError, ValueError, AttributeError, KeyError) as e:
    cli.fail(cli.config_error(e, sys.argv))
  flags.DEFINE_string("workdir", os.path.join(REPO, "workdirs", "synthetic"),
                      "checkpoints, metrics and evaluation results go here")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate), or only evaluate")
  flags.DEFINE_bool("config_help", False, "print the config's fields (--config.<field>), their "
                    "values, meanings and allowed values, and exit")
  flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
  flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
  flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
  flags.DEFINE_bool("distributed", False, "multi-host: call jax.distributed.initialize() even "
                    "without a coordinator address (JAX detects SLURM, Open MPI, Kubernetes)")
  flags.DEFINE_integer("heartbeat_timeout", 100, "multi-host: seconds without a heartbeat "
                       "after which a process counts as dead and every other process stops")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = FLAGS.config
    config.to_dict()  # a file that failed to load raises here, on first use
  except (OSError, SyntaxError, ValueError) as e:
    cli.fail(cli.config_error(e, sys.argv))
  if FLAGS.config_help:
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")]
    print(f"the fields of {given[-1] if given else 'configs/synthetic.py'} (each settable "
          "as --config.<field>=<value>):")
    print(config_base.field_help(config))
    return
  if FLAGS.distributed or FLAGS.coordinator_address or "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    print(f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} of {jax.device_count()} devices", flush=True)
  doing = f"{'training' if FLAGS.mode == 'train' else 'evaluating'} in {FLAGS.workdir}"
  with cli.one_line_errors(trainer.TrainingError, video_source.DataNotPreparedError,
                           checkpoint.CheckpointError, frames.DamagedDataError, doing=doing):
    if FLAGS.mode == "train":
      trainer.train_and_evaluate(config, FLAGS.workdir)
    else:
      workdir_eval.evaluate_workdir(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, define_flags)
