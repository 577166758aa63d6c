"""Build a dataset's array_record shards from what its authors distribute.

    python -m kpsem_jax.prepare DATASET --source_dir=SRC --data_dir=OUT [--split=1|2|3]
        [--config=NAME] [--short_side=256] [--splits_dir=DIR] [--min_frames=8] [--workers=N]

DATASET is one of synthetic_motion (no source needed), hmdb51, ucf101, mini_kinetics,
kinetics400, something_something_v1; docs/datasets.md gives each source layout. Shows a
progress bar per split (videos), then a summary: examples per split, classes, skipped
files. Videos are decoded and encoded in ``--workers`` processes (default: the cores this
process may use); the result is the same for any number. Every skipped file is listed with
its reason in ``skipped.tsv`` beside the shards. An interrupted build leaves only an
``incomplete.*`` folder; rerunning the command builds again and finishes.
"""

import errno
import os
import shutil
import sys
import time

from absl import app, flags

from kpsem_jax.workdir_lock import WorkdirInUseError, WorkdirLock


def datasets():
  """The dataset names ``prepare`` builds."""
  from data import BUILDERS  # pylint: disable=import-outside-toplevel
  return sorted(BUILDERS)


def _remove_interrupted_builds(data_dir: str, before: float, log) -> None:
  """Removes TFDS's ``incomplete.*`` folders beside a finished build that predate it (left
  by a killed build; a build still running elsewhere started later)."""
  parent = os.path.dirname(data_dir)
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if name.startswith("incomplete.") and os.path.isdir(path) and os.path.getmtime(path) < before:
      shutil.rmtree(path, ignore_errors=True)
      log(f"removed {path}, left by an interrupted build")


# The operating system's answers to a write that cannot be done.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


class PrepareError(RuntimeError):
  """A build that cannot go on; the message names the folder or file and what to do."""


def _build(builder, dataset: str, name: str, log) -> None:
  """Runs TFDS's build; errors become one :class:`PrepareError` or ``ValueError``."""
  started = time.time()
  try:
    builder.download_and_prepare()
  except AssertionError as e:  # TFDS: a split whose every video was skipped while decoding
    if "No examples were yielded" not in str(e):
      raise
    split = str(e).split('split "')[-1].split('"')[0]
    reasons = [r for s, _, r in builder.skipped.entries if s == split]
    raise ValueError(f"{dataset} ({name}): no video of the {split} split could "
                     f"be used, so it cannot be written; the last one skipped: "
                     f"{reasons[-1] if reasons else '?'}") from None
  except (OSError, RuntimeError) as e:  # a full disk, a folder that cannot be written
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, OSError):
      if e.errno not in WRITE_ERRORS:
        raise
    elif "write" not in text and "space" not in text:  # array_record's failed writes
      raise
    where = os.path.dirname(builder.data_dir)
    try:
      free = f"; {shutil.disk_usage(where).free / 2**20:.1f} MiB free there"
    except OSError:
      free = ""
    raise PrepareError(f"building {dataset} ({name}) in {where} failed: "
                       f"{' '.join(text.split())}{free}; free space or fix the folder, then "
                       "rerun the same command: the build starts again") from None
  _remove_interrupted_builds(builder.data_dir, started, log)


def config_name(dataset: str, split, config):
  if config:
    return config
  if dataset in ("hmdb51", "ucf101"):
    return f"split{split or 1}"
  return "default"


def prepare(dataset: str, data_dir: str, source_dir=None, split=None, config=None,
            short_side=256, splits_dir=None, min_frames=None, log=print, workers=1,
            test_fraction=None):
  """Builds (or reuses) the dataset, decoding and encoding videos in ``workers`` processes;
  returns ``(builder, skipped entries)``. ``test_fraction``: video_folder's held-out share."""
  from data import builder_class  # pylint: disable=import-outside-toplevel
  cls = builder_class(dataset)
  name = config_name(dataset, split, config)
  extra = {} if min_frames is None else {"min_frames": min_frames}
  builder_config = name
  user_named = getattr(cls, "ANY_CONFIG_NAME", False)  # video_folder: the user names it
  if user_named:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    if name not in cls.builder_configs:
      builder_config = tfds.core.BuilderConfig(name=name)
    if test_fraction is not None:
      extra["test_fraction"] = test_fraction
  elif test_fraction is not None:
    raise ValueError(f"--test_fraction is for video_folder, not {dataset}")
  builder = cls(data_dir=data_dir, config=builder_config, source_dir=source_dir,
                short_side=short_side or None, splits_dir=splits_dir, workers=workers, **extra)
  if user_named:
    builder.check_same_source()
  folder = os.path.dirname(builder.data_dir)  # <data_dir>/<dataset>/<config>
  os.makedirs(folder, exist_ok=True)
  lock = WorkdirLock(folder, log, name=".prepare.lock",
                     instead="use another --data_dir")
  try:
    lock.acquire()
  except WorkdirInUseError as e:
    raise PrepareError(f"another prepare is building {dataset} ({name}): {e}") from None
  try:
    _build(builder, dataset, name, log)
  finally:
    lock.release()
  if user_named:
    builder.record_source()
  entries = builder.skipped.entries
  report = os.path.join(builder.data_dir, "skipped.tsv")
  if entries or not os.path.exists(report):
    with open(report, "w", encoding="utf-8") as f:
      f.write("split\tfile\treason\n")
      f.writelines(f"{s}\t{p}\t{r}\n" for s, p, r in entries)
  info = builder.info
  log(f"{dataset} ({name}) in {builder.data_dir}")
  for split_name, split_info in info.splits.items():
    skipped = builder.skipped.count(split_name)
    log(f"  {split_name:10s} {split_info.num_examples:7d} examples"
        + (f", {skipped} skipped" if skipped else ""))
  for split_name in builder.empty_splits:
    skipped = builder.skipped.count(split_name)
    log(f"  {split_name:10s}       0 examples: none of its {skipped} listed videos was found, "
        "so the split was not written")
  log(f"  {info.features['label'].num_classes} classes")
  if entries:
    log(f"  {len(entries)} files skipped; each is listed with its reason in {report}")
    for s, p, r in entries[:5]:
      log(f"    {s}: {r}" if p and p in r else f"    {s}: {p}: {r}")
  return builder, entries


def main(argv):
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  from data import usable_cores  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  FLAGS = flags.FLAGS
  if len(argv) != 2:
    print("usage: python -m kpsem_jax.prepare DATASET --source_dir=SRC --data_dir=OUT",
          file=sys.stderr)
    sys.exit(2)
  cli.prologue()
  try:
    prepare(argv[1], FLAGS.data_dir, FLAGS.source_dir, FLAGS.split, FLAGS.config,
            FLAGS.short_side, FLAGS.splits_dir, FLAGS.min_frames,
            workers=FLAGS.workers or usable_cores(), test_fraction=FLAGS.test_fraction)
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
  flags.DEFINE_integer("workers", 0, "processes that decode and encode videos (0: one per "
                       "core this process may use)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
