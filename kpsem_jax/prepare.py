"""Build a dataset's array_record shards from what its authors distribute.

    python -m kpsem_jax.prepare DATASET --source_dir=SRC --data_dir=OUT [--split=1|2|3]
        [--config=NAME] [--short_side=256] [--splits_dir=DIR] [--min_frames=8] [--workers=N]
        [--beam_options="--runner=DirectRunner ..."]

DATASET names a builder folder of ``data/`` (the command without it lists them), e.g.
synthetic_motion (no source needed), hmdb51, or video_folder (your own videos, a folder per
class); docs/datasets.md gives each source layout. Shows a
progress bar per split (videos), then a summary: examples per split, classes, skipped
files. Videos are decoded and encoded in ``--workers`` processes (default: the cores this
process may use); the result is the same for any number. With ``--beam_options`` the build
runs as an Apache Beam pipeline instead (DirectRunner here, Flink/Spark/Dataflow on a
cluster; the same examples and frames). Every skipped file is listed with
its reason in ``skipped.tsv`` beside the shards. An interrupted build leaves only an
``incomplete.*`` folder; rerunning the command builds again and finishes.
"""

import os
import sys

from absl import flags

from kpsem_jax import cli
from kpsem_jax.data.prepare import PrepareError, datasets, prepare
from kpsem_jax.host import usable_cores


def main(argv):
  FLAGS = flags.FLAGS
  if len(argv) != 2:
    print("usage: python -m kpsem_jax.prepare DATASET --source_dir=SRC --data_dir=OUT\n"
          f"DATASET: one of {', '.join(datasets())}", file=sys.stderr)
    sys.exit(2)
  try:
    prepare(argv[1], FLAGS.data_dir, FLAGS.source_dir, FLAGS.split, FLAGS.config,
            FLAGS.short_side, FLAGS.splits_dir, FLAGS.min_frames,
            workers=FLAGS.workers or usable_cores(), test_fraction=FLAGS.test_fraction,
            beam_options=FLAGS.beam_options, verbose=FLAGS.verbose)
  except (ValueError, FileNotFoundError, PrepareError) as e:
    cli.fail(str(e))


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("source_dir", None, "the dataset as distributed (not for synthetic_motion)")
  flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"), "output root")
  flags.DEFINE_integer("split", None, "official split 1, 2 or 3 (hmdb51, ucf101)")
  flags.DEFINE_string("config", None, "builder config, e.g. split1 or tiny (overrides --split)")
  flags.DEFINE_integer("short_side", 256, "stored frames' short side in pixels (0: original)")
  flags.DEFINE_integer("min_frames", 8, "skip (and list) videos with fewer decoded frames")
  flags.DEFINE_string("splits_dir", None, "folder of split/label files if not in source_dir")
  flags.DEFINE_float("test_fraction", None, "video_folder with class folders only: the share "
                     "of each class held out for test (default 0.2)")
  flags.DEFINE_bool("verbose", False, "also show TFDS's own lines and progress bars")
  flags.DEFINE_integer("workers", 0, "processes that decode and encode videos (0: one per "
                       "core this process may use)")
  flags.DEFINE_string("beam_options", None, "build through an Apache Beam pipeline with these "
                      "Beam options, e.g. \"--runner=DirectRunner --direct_running_mode="
                      "multi_processing --direct_num_workers=4\" (docs/datasets.md; needs "
                      "requirements-beam.txt)")


if __name__ == "__main__":
  cli.run(main, define_flags)
