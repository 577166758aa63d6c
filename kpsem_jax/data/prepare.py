"""Building a dataset's array_record shards from what its authors distribute (the
library of ``python -m kpsem_jax.prepare``, whose docstring has the command line).

Shows a progress bar per split (videos), then a summary: examples per split, classes,
skipped files. Videos are decoded and encoded in ``workers`` processes; the result is the
same for any number. With ``beam_options`` the build runs as an Apache Beam pipeline
instead (the same examples and frames). Every skipped file is listed with its reason in
``skipped.tsv`` beside the shards. An interrupted build leaves only an ``incomplete.*``
folder; building again finishes it.
"""

import contextlib
import errno
import io
import logging
import os
import shlex
import shutil
import time
from typing import Optional


from kpsem_jax.workdir_lock import WorkdirInUseError, WorkdirLock


def datasets():
  """The dataset names ``prepare`` builds."""
  from kpsem_jax.data.registry import builders  # pylint: disable=import-outside-toplevel
  return sorted(builders())


def builder_version(dataset: str) -> str:
  """The version ``prepare`` builds of ``dataset`` (its TFDS builder's ``VERSION``)."""
  from kpsem_jax.data.registry import builder_class  # pylint: disable=import-outside-toplevel
  return str(builder_class(dataset).VERSION)


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


def _pipeline_options(beam_options: str):
  """``--beam_options``'s text -> Beam's ``PipelineOptions``; a clear error without Beam.
  Beam's own log records (its import's, the runner's, its workers') are not shown unless
  the options set ``--default_sdk_harness_log_level``: a failed pipeline reaches the
  caller as an exception, reported in one line."""
  previous = logging.root.manager.disable
  logging.disable(logging.WARNING)  # Beam's import warns about optional GCP clients
  try:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("--beam_options needs Apache Beam: pip install -r requirements-beam.txt "
                     "(or pip install -e .[beam])") from None
  finally:
    logging.disable(previous)
  arguments = shlex.split(beam_options)
  if not any(a.startswith("--default_sdk_harness_log_level") for a in arguments):
    arguments.append("--default_sdk_harness_log_level=CRITICAL")
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
  return PipelineOptions(arguments)


def _build(builder, dataset: str, name: str, log, beam_options=None,
           verbose: bool = False) -> None:
  """Runs TFDS's build (through Beam with ``beam_options``); errors become one
  :class:`PrepareError` or ``ValueError``. Unless ``verbose``, TFDS's own lines ("Downloading
  and preparing dataset Unknown size", though nothing is downloaded) and progress bars
  (named after the build's temporary files) are not shown: one bar a split is."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  started = time.time()
  config = tfds.download.DownloadConfig(beam_options=beam_options)
  quiet = contextlib.nullcontext() if verbose else _tfds_quiet()
  try:
    with quiet:
      builder.download_and_prepare(download_config=config)
  except (AssertionError, ValueError) as e:  # TFDS: a split whose every video was skipped
    text = str(e)
    if "No examples were yielded" in text:  # the plain build's words
      split = text.split('split "')[-1].split('"')[0]
    elif "generated examples is 0 for split " in text:  # its Beam writer's
      split = text.split("for split ")[-1].split(".")[0]
    else:
      raise
    reasons = [r for s, _, r in builder.skipped.entries if s == split]
    last = (f"the last one skipped: {reasons[-1]}" if reasons else
            "a build without --beam_options names each video and why it was skipped")
    raise ValueError(f"{dataset} ({name}): no video of the {split} split could "
                     f"be used, so it cannot be written; {last}") from None
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


@contextlib.contextmanager
def _tfds_quiet():
  """TFDS's progress bars off and its printed lines (stdout) dropped, while inside."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()


def config_name(dataset: str, split, config):
  """The build's name: ``config``, else ``split<split>`` for builders of official splits,
  else ``"default"``."""
  from kpsem_jax.data.registry import builder_class  # pylint: disable=import-outside-toplevel
  if config:
    return config
  if builder_class(dataset).SPLIT_CONFIGS:
    return f"split{split or 1}"
  return "default"


def prepare_command(data_dir: str, name: str, config: Optional[str]) -> str:
  """The ``python -m kpsem_jax.prepare`` command that builds ``name``/``config``."""
  from kpsem_jax.data.registry import builder_class  # pylint: disable=import-outside-toplevel
  cls = builder_class(name)
  source = " --source_dir=<the dataset as distributed>" if cls.NEEDS_SOURCE else ""
  cfg = ""
  if config and cls.SPLIT_CONFIGS and config.startswith("split"):
    cfg = f" --split={config[5:]}"
  elif config and config != "default":
    cfg = f" --config={config}"
  return f"python -m kpsem_jax.prepare {name}{source} --data_dir={data_dir}{cfg}"


def prepare(dataset: str, data_dir: str, source_dir=None, split=None, config=None,
            short_side=256, splits_dir=None, min_frames=None, log=print, workers=1,
            test_fraction=None, beam_options=None, verbose=False):
  """Builds (or reuses) the dataset, decoding and encoding videos in ``workers`` processes,
  or through an Apache Beam pipeline with ``beam_options`` (Beam's command-line options as
  one string, e.g. ``"--runner=DirectRunner --direct_num_workers=4"``); returns
  ``(builder, skipped entries)``. ``test_fraction``: video_folder's held-out share;
  ``verbose``: TFDS's own output too."""
  pipeline_options = _pipeline_options(beam_options) if beam_options else None
  from kpsem_jax.data.registry import builder_class  # pylint: disable=import-outside-toplevel
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
                short_side=short_side or None, splits_dir=splits_dir, workers=workers,
              beam=pipeline_options is not None, **extra)
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
    _build(builder, dataset, name, log, pipeline_options, verbose)
    if pipeline_options is not None:
      from kpsem_jax.data import beam_build  # pylint: disable=import-outside-toplevel
      builder.skipped.entries.extend(beam_build.collect(builder.data_dir,
                                                        list(builder.info.splits)))
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
