"""The KPSEM experiment suite at CPU scale, on synthetic_motion (docs/experiments.md).

    python -m kpsem_jax.experiments --workdir=DIR [--suite=ablation] [--seeds=3] [--steps=600]
    python -m kpsem_jax.experiments --workdir=DIR --quick     # the core contrast, one seed
    python -m kpsem_jax.experiments --workdir=DIR --report_only   # the table so far

Every run has the same data, budget (steps, batch, schedule) and seeds; only the model
changes: each is a variant of ``configs/synthetic_c2d.py``, a time-blind C2D (a 2-D ResNet
that sees each frame alone) with and without KPSEM. The ``core`` suite is that contrast;
``ablation`` adds the paper's ablations on C2D-KPSEM, where KPSEM is the only source of
temporal information: K in {1, 4, 9, 16} regions (K = 1: a single key point per channel),
G in {1, 2, 4, 8} AReSE sets, fixed instead of adaptive regions, the embedding width d_e,
and the stage KPSEM reads. ``gradient`` compares KPSEM's match gradient, the paper's
(PyTorch autograd's) and the stopped one, with and without gradient clipping, on the core
contrast and on fixed vs adaptive regions; ``controls`` a time-ordered readout of the C2D;
``lr`` the C2D's learning-rate sweep and the core contrast at other learning rates, with and
without clipping; ``backbones`` KPSEM on order-aware backbones (R3D, MFNet-3D).

Each run is a ``trainer.train_and_evaluate`` workdir under ``DIR/runs/<name>_seed<s>``: an
interrupted suite resumes (finished runs are kept, a cut run continues from its checkpoint).
``DIR/results.md`` holds the table (mean and sample standard deviation over seeds of video
top-1 and of the reversal error, the share of test videos labelled as their time-reversed
class, and each row's difference to its reference row with Welch's t-test; a trend test
over K and over G: :mod:`kpsem_jax.experiments.stats`), ``DIR/results.json`` every number,
``DIR/results.png`` a bar chart. ``--data``: synthetic_motion's ``translation`` config (the
default; 8 directions), ``translation_hard`` (a smaller object, 3x the camera motion) or
``default`` (with rotations and approach/recede, whose direction KPSEM's per-step features
cannot carry: docs/experiments.md).
"""

import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

from kpsem_jax import atomic
from kpsem_jax.experiments import report
from kpsem_jax.experiments.suite import DATA, PAIRED, SUITES, Variant, run_config, slug


class WorkdirMismatch(ValueError):
  """A suite's workdir holds finished runs made with other data or steps."""


def run_one(variant: Variant, seed: int, steps: int, data_dir: str, workdir: str,
            data: str = "translation") -> Dict:
  """Trains and evaluates one (variant, seed), or reads the result of a finished run.

  Raises :class:`WorkdirMismatch` where ``workdir`` holds a finished run on other data or
  steps."""
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  result_path = os.path.join(workdir, "result.json")
  if os.path.exists(result_path):
    result = json.load(open(result_path))
    held = (result.get("data", "default"), result["steps"])  # no `data`: the default set
    if held != (data, steps):
      raise WorkdirMismatch(f"{result_path}: a finished run with --data={held[0]} "
                            f"--steps={held[1]}, not --data={data} --steps={steps}; use "
                            "another --workdir, or the same flags to resume this suite")
    return result
  start = time.perf_counter()
  config = run_config(variant, seed, steps, data_dir, data)
  final = trainer.train_and_evaluate(config, workdir)
  confusion = np.asarray(final["confusion"])
  result = dict(variant=variant.name, group=variant.group, config=variant.config, seed=seed,
                data=data, steps=steps,
                video_top1=float(final["video_top1"]),
                reversal_error=report.reversal_error(confusion),
                num_videos=int(final["num_videos"]), seconds=time.perf_counter() - start,
                confusion=confusion.astype(int).tolist())
  if config.model.use_kpsem and config.model.kpsem.get("adaptive", True):
    result["split_movement"] = split_lines_moved(workdir, config)
  atomic.write_text(result_path, json.dumps(result, indent=1))
  return result


def split_lines_moved(workdir: str, config, videos: int = 128) -> Dict[str, float]:
  """:func:`split_movement.movement` of a trained run's split lines on its first ``videos``
  evaluation videos (one centre view each), in feature-map pixels."""
  from kpsem_jax.data import clips as clips_lib  # pylint: disable=import-outside-toplevel
  from kpsem_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from kpsem_jax.experiments import split_movement  # pylint: disable=import-outside-toplevel
  from kpsem_jax.inference.predictor import load_predictor  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import normalize  # pylint: disable=import-outside-toplevel
  predictor = load_predictor(workdir, prefer_best=False)
  _, _, source = datasets.open_dataset(config.dataset)
  spec = predictor.with_spec(num_clips=1, num_crops=1)
  clips = np.stack([clips_lib.eval_views(source[i], spec)[0]
                    for i in range(min(videos, len(source)))])
  return split_movement.of_model(predictor.model, predictor.variables, normalize(clips))


def run_suite(suite: str, workdir: str, seeds: int = 3, steps: int = 600,
              data_dir: str = "~/tensorflow_datasets", only: Sequence[str] = (),
              log=print, data: str = "translation", train: bool = True) -> List[Dict]:
  """Trains the runs of ``suite`` not yet finished in ``workdir`` (``train=False``: none,
  the table then holds the finished ones) and writes the table, numbers and chart."""
  if suite not in SUITES:
    raise ValueError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
  if data not in DATA:
    raise ValueError(f"unknown data {data!r}; choose one of {sorted(DATA)}")
  variants = [v for v in SUITES[suite] if not only or v.name in only]
  data_dir = os.path.expanduser(data_dir)
  if train:
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  results, missing = [], 0
  paired = suite in PAIRED
  # Paired suites go seed by seed, so a suite cut short (or spread over sittings) holds
  # whole pairs; the others row by row.
  todo = ([(v, s) for s in range(seeds) for v in variants] if paired
          else [(v, s) for v in variants for s in range(seeds)])
  restored = restore_recorded(workdir, todo, data, steps) if train else 0
  if restored:
    log(f"{restored} finished runs restored from {os.path.join(workdir, 'results.json')}")
  if train:
    log(time_left(todo, workdir))
  for i, (v, seed) in enumerate(todo, 1):
    run_dir = os.path.join(workdir, "runs", f"{slug(v.name)}_seed{seed}")
    if not train and not os.path.exists(os.path.join(run_dir, "result.json")):
      missing += 1
      continue
    log(f"[{i}/{len(todo)}] {v.name}, seed {seed} -> {run_dir}")
    r = run_one(v, seed, steps, data_dir, run_dir, data)
    log(f"    video top-1 {100 * r['video_top1']:.1f}%, reversal error "
        f"{100 * r['reversal_error']:.1f}% ({r['seconds']:.0f} s)")
    results.append(r)
    if train:  # rewritten after every run, so a long suite shows where it stands
      report.publish(workdir, suite, data, steps, seeds, results, variants, paired)
  if not train and results:
    report.publish(workdir, suite, data, steps, seeds, results, variants, paired)
  if missing:
    log(f"{missing} of {len(todo)} runs are not finished and not in the table; run without "
        "--report_only to train them")
  return report.summarize(results, variants, paired)


def restore_recorded(workdir: str, todo, data: str, steps: int) -> int:
  """Writes ``runs/<name>_seed<s>/result.json`` for every run of ``todo`` that
  ``workdir/results.json`` records (same config, data and steps) but whose folder is gone,
  so that a suite resumes from its committed ``results.json`` alone (copied into a new
  workdir); returns how many."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return 0
  recorded = {(r["variant"], r["config"], r.get("seed"), r.get("data"), r.get("steps")): r
              for r in json.load(open(path)).get("runs", [])}
  count = 0
  for v, seed in todo:
    run = recorded.get((v.name, v.config, seed, data, steps))
    target = os.path.join(workdir, "runs", f"{slug(v.name)}_seed{seed}", "result.json")
    if run is not None and not os.path.exists(target):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      atomic.write_text(target, json.dumps(run, indent=1))
      count += 1
  return count


def time_left(todo, workdir: str) -> str:
  """One line: how many of ``todo``'s (variant, seed) runs are finished in ``workdir`` and
  about how long the rest take, from the finished runs' times (the same variant's where it
  has some, else all of them)."""
  done, left = {}, []
  for v, seed in todo:
    path = os.path.join(workdir, "runs", f"{slug(v.name)}_seed{seed}", "result.json")
    if os.path.exists(path):
      done.setdefault(v.name, []).append(json.load(open(path))["seconds"])
    else:
      left.append(v)
  if not left:
    return f"all {len(todo)} runs are finished; writing the table"
  every = [t for times in done.values() for t in times]
  if not every:
    return (f"{len(left)} of {len(todo)} runs to train; the time left is estimated after "
            "the first one")
  seconds = sum(np.mean(done.get(v.name, every)) for v in left)
  return (f"{len(left)} of {len(todo)} runs to train, about {seconds / 60:.0f} min on this "
          f"machine (from the {len(every)} finished runs' times)")


def define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_enum("suite", "ablation", sorted(SUITES), "which experiments")
  flags.DEFINE_bool("quick", False, "the core contrast (C2D vs C2D-KPSEM) with one seed: "
                    "--suite=core --seeds=1")
  flags.DEFINE_string("workdir", None, "results and one training workdir per run")
  flags.DEFINE_integer("seeds", 3, "seeds per model (0 .. seeds-1)", lower_bound=1)
  flags.DEFINE_integer("steps", 600, "training steps per run (batch 16)", lower_bound=1)
  flags.DEFINE_enum("data", "translation", sorted(DATA), "synthetic_motion's config: "
                    "translations in 8 directions, or the default set (translations, "
                    "rotations, approach/recede)")
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "where synthetic_motion is built")
  flags.DEFINE_multi_string("only", [], "run only these variants (by name; repeatable)")
  flags.DEFINE_bool("list", False, "print the suite's variants and exit")
  flags.DEFINE_bool("report_only", False, "train nothing: the table of the runs finished in "
                    "--workdir so far")
  flags.mark_flag_as_required("workdir")


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  suite, seeds = ("core", 1) if FLAGS.quick else (FLAGS.suite, FLAGS.seeds)
  if FLAGS.list:
    width = max(len(v.group) for v in SUITES[suite])
    for v in SUITES[suite]:
      print(f"{v.group:{width}s}  {v.name}")
    return 0
  unknown = set(FLAGS.only) - {v.name for v in SUITES[suite]}
  if unknown:
    print(f"error: --only names no variant of {suite}: {sorted(unknown)}; --list shows "
          "them", file=sys.stderr)
    return 1
  from kpsem_jax.train import trainer  # pylint: disable=import-outside-toplevel
  # A stop on a signal is one line (the suite resumes where it stopped), as in train.py.
  with cli.one_line_errors(WorkdirMismatch, trainer.TrainingError,
                           doing=f"running suite {suite} in {FLAGS.workdir}"):
    rows = run_suite(suite, FLAGS.workdir, seeds, FLAGS.steps, FLAGS.data_dir, FLAGS.only,
                     data=FLAGS.data, train=not FLAGS.report_only)
  if not rows:
    print(f"error: {FLAGS.workdir}/runs holds no finished run of --suite={suite}; run "
          "without --report_only to train them", file=sys.stderr)
    return 1
  print(open(os.path.join(FLAGS.workdir, "results.md")).read())
  print(f"table, numbers and chart in {FLAGS.workdir}/results.md, results.json, results.png")
  return 0
