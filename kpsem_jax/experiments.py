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
contrast and on fixed vs adaptive regions.

Each run is a ``trainer.train_and_evaluate`` workdir under ``DIR/runs/<name>_seed<s>``: an
interrupted suite resumes (finished runs are kept, a cut run continues from its checkpoint).
``DIR/results.md`` holds the table (mean and sample standard deviation over seeds of video
top-1 and of the reversal error, the share of test videos labelled as their time-reversed
class, and each row's difference to its reference row with Welch's t-test; a trend test
over K and over G: :mod:`kpsem_jax.experiment_stats`), ``DIR/results.json`` every number,
``DIR/results.png`` a bar chart. ``--data``: synthetic_motion's ``translation`` config (the
default; 8 directions) or ``default`` (with rotations and approach/recede, whose direction
KPSEM's per-step features cannot carry: docs/experiments.md).
"""

import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from data import atomic
from kpsem_jax import experiment_stats as stats


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model of a suite: its name, its group in the table, its variant of
  ``configs/synthetic_c2d.py`` (e.g. ``c2d_kpsem,k=9``) and, where it is not the base
  C2D-KPSEM, the name of the row it is compared with (``versus``)."""
  name: str
  group: str
  config: str
  versus: Optional[str] = None


BASE = Variant("C2D-KPSEM (K=4, G=4, d_e=8, res2)", "core", "c2d_kpsem")
C2D = Variant("C2D", "core", "c2d")
CORE = [C2D, BASE]
SUITES: Dict[str, List[Variant]] = {
    "core": CORE,
    "ablation": CORE + [
        Variant("K=1 (single key point)", "regions K", "c2d_kpsem,k=1"),
        Variant("K=9", "regions K", "c2d_kpsem,k=9"),
        Variant("K=16", "regions K", "c2d_kpsem,k=16"),
        Variant("G=1 (one AReSE set)", "sets G", "c2d_kpsem,g=1"),
        Variant("G=2", "sets G", "c2d_kpsem,g=2"),
        Variant("G=8", "sets G", "c2d_kpsem,g=8"),
        Variant("fixed regions", "regions", "c2d_kpsem,fixed"),
        Variant("d_e=4", "embedding d_e", "c2d_kpsem,de=4"),
        Variant("d_e=16", "embedding d_e", "c2d_kpsem,de=16"),
        Variant("KPSEM after res3", "position", "c2d_kpsem,at=res3"),
        Variant("KPSEM after res4", "position", "c2d_kpsem,at=res4"),
    ],
    # Issue 30: Eq. 9's match weights differentiated as PyTorch's autograd does ("paper"),
    # against the default "stopped" gradient, with and without the suite's clipping.
    "gradient": CORE + [
        Variant("C2D-KPSEM paper gradient", "match gradient", "c2d_kpsem,grad=paper"),
        Variant("C2D-KPSEM paper gradient, no clipping", "match gradient",
                "c2d_kpsem,grad=paper,clip=0", versus="C2D-KPSEM paper gradient"),
        Variant("C2D-KPSEM stopped gradient, no clipping", "match gradient",
                "c2d_kpsem,clip=0"),
        Variant("fixed regions", "regions", "c2d_kpsem,fixed"),
        Variant("fixed regions, paper gradient", "regions", "c2d_kpsem,fixed,grad=paper",
                versus="C2D-KPSEM paper gradient"),
    ],
}
# The base C2D-KPSEM is also the K=4, G=4, adaptive, d_e=8 and res2 point of each sweep; every
# ablation row is compared with it, and it with C2D.


def reference(variant: Variant) -> Optional[Variant]:
  """The row a variant is compared with: C2D for the base C2D-KPSEM, its ``versus`` row,
  else the base."""
  if variant == C2D:
    return None
  if variant.versus:
    return next(v for suite in SUITES.values() for v in suite if v.name == variant.versus)
  return C2D if variant == BASE else BASE


DATA = {  # synthetic_motion's configs the suite runs on, and how the table describes them
    "translation": "synthetic_motion translation (translations in 8 directions, in "
                   "time-reversed pairs; chance 12.5%, a frame-order-blind model tops out at "
                   "50%)",
    # 16 frames: a clip and its reversal are sampled at different moments (docs/experiments.md)
    "default": "synthetic_motion default (right/left, down/up, clockwise/anticlockwise, "
               "approach/recede, in time-reversed pairs; chance 12.5%)",
}


def run_config(variant: Variant, seed: int, steps: int, data_dir: str,
               data: str = "translation"):
  """``configs/synthetic_c2d.py:<variant.config>,steps=<steps>,data=<data>`` with ``seed``
  and ``data_dir``."""
  from kpsem_jax import trainer  # pylint: disable=import-outside-toplevel
  c = trainer.load_config("synthetic_c2d", f"{variant.config},steps={steps},data={data}")
  c.seed = seed
  c.dataset.data_dir = data_dir
  return c


def slug(name: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").replace("__", "_")


def reversal_error(confusion: np.ndarray) -> float:
  """Share of videos labelled as their time-reversed class (classes 2k <-> 2k+1)."""
  n = confusion.shape[0] - confusion.shape[0] % 2
  swapped = sum(confusion[i, i ^ 1] for i in range(n))
  return float(swapped / max(confusion.sum(), 1))




class WorkdirMismatch(ValueError):
  """A suite's workdir holds finished runs made with other data or steps."""


def run_one(variant: Variant, seed: int, steps: int, data_dir: str, workdir: str,
            data: str = "translation") -> Dict:
  """Trains and evaluates one (variant, seed), or reads the result of a finished run.

  Raises :class:`WorkdirMismatch` where ``workdir`` holds a finished run on other data or
  steps."""
  from kpsem_jax import trainer  # pylint: disable=import-outside-toplevel
  result_path = os.path.join(workdir, "result.json")
  if os.path.exists(result_path):
    result = json.load(open(result_path))
    held = (result.get("data", "default"), result["steps"])  # runs before `data`: default
    if held != (data, steps):
      raise WorkdirMismatch(f"{result_path}: a finished run with --data={held[0]} "
                            f"--steps={held[1]}, not --data={data} --steps={steps}; use "
                            "another --workdir, or the same flags to resume this suite")
    return result
  start = time.perf_counter()
  final = trainer.train_and_evaluate(run_config(variant, seed, steps, data_dir, data), workdir)
  confusion = np.asarray(final["confusion"])
  result = dict(variant=variant.name, group=variant.group, config=variant.config, seed=seed,
                data=data, steps=steps,
                video_top1=float(final["video_top1"]),
                reversal_error=reversal_error(confusion),
                num_videos=int(final["num_videos"]), seconds=time.perf_counter() - start,
                confusion=confusion.astype(int).tolist())
  atomic.write_text(result_path, json.dumps(result, indent=1))
  return result


def sweep_setting(variant: Variant, key: str) -> Optional[int]:
  """The K (``key="k"``) or G (``"g"``) of a variant in that sweep: its own option, or the
  base's (K=4, G=4) for the base; None for a variant outside the sweep."""
  if variant == BASE:
    return 4
  model, *options = variant.config.split(",")
  opts = dict(o.split("=", 1) for o in options if "=" in o)
  if model == "c2d_kpsem" and len(options) == 1 and key in opts:
    return int(opts[key])
  return None


def summarize(results: Sequence[Dict], variants: Sequence[Variant]) -> List[Dict]:
  """One row per variant with runs: the number of seeds, mean and sample std (ddof=1) over
  them, and against its :func:`reference` row the difference of mean top-1 and Welch's
  t-test (``welch``: t, dof, two-sided p; None below two seeds on either side),
  ``significant`` where p < 0.05."""
  rows = {}
  for v in variants:
    runs = [r for r in results if r["variant"] == v.name]
    if not runs:
      continue
    top1 = np.array([r["video_top1"] for r in runs])
    rev = np.array([r["reversal_error"] for r in runs])
    rows[v.name] = dict(variant=v.name, group=v.group, config=v.config, seeds=len(runs),
                        top1_mean=float(top1.mean()), top1_std=stats.sample_std(top1),
                        reversal_mean=float(rev.mean()), reversal_std=stats.sample_std(rev),
                        top1_per_seed=[float(x) for x in top1])
  for v in variants:
    ref = reference(v)
    if v.name not in rows or ref is None or ref.name not in rows:
      continue
    row, base = rows[v.name], rows[ref.name]
    test = stats.welch(row["top1_per_seed"], base["top1_per_seed"])
    row.update(reference=ref.name, delta=row["top1_mean"] - base["top1_mean"], welch=test,
               significant=bool(test is not None and test["p"] < stats.SIGNIFICANCE))
  return list(rows.values())


def trends(results: Sequence[Dict], variants: Sequence[Variant]) -> Dict[str, Dict]:
  """Per sweep (``K`` regions, ``G`` sets) with runs at two settings or more: the trend of
  top-1 over every run of the sweep (:func:`kpsem_jax.experiment_stats.trend`)."""
  found = {}
  for key, label in (("k", "K"), ("g", "G")):
    points = [(sweep_setting(v, key), r["video_top1"]) for v in variants
              for r in results if r["variant"] == v.name and sweep_setting(v, key)]
    test = stats.trend([x for x, _ in points], [y for _, y in points]) if points else None
    if test is not None:
      found[label] = dict(test, settings=sorted({x for x, _ in points}))
  return found


def _short(name: str) -> str:
  """How the table names a reference row."""
  return {C2D.name: "C2D", BASE.name: "C2D-KPSEM"}.get(name, name)


def _p(p: float) -> str:
  return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(rows: Sequence[Dict], steps: int, data: str = "translation",
             trend_tests: Optional[Dict[str, Dict]] = None) -> str:
  c = run_config(C2D, 0, steps, "", data)  # the clip and batch of every run
  lines = [f"{DATA[data]}, {c.clip.frames}x{c.clip.crop}x{c.clip.crop} clips, {steps} steps of "
           f"{c.batch_size} clips; mean ± sample std (ddof=1) over the seeds of each row. Δ: "
           "difference of mean top-1 to the reference row (C2D for C2D-KPSEM, C2D-KPSEM for "
           "the ablations); p: Welch's two-sided t-test of the two rows' per-seed top-1 (two "
           f"seeds or more on both), * where p < {stats.SIGNIFICANCE}.", "",
           "| model | seeds | video top-1 (%) | reversal error (%) | per seed (%) | "
           "Δ top-1 (points) | Welch t (dof), p |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    per_seed = ", ".join(f"{100 * x:.1f}" for x in r["top1_per_seed"])
    delta = (f"{100 * r['delta']:+.1f}{' *' if r['significant'] else ''} vs "
             f"{_short(r['reference'])}" if "delta" in r else "")
    test = r.get("welch")
    welch_text = (f"{test['t']:.2f} ({test['dof']:.1f}), {_p(test['p'])}" if test else "")
    top1, reversal = f"{100 * r['top1_mean']:.1f}", f"{100 * r['reversal_mean']:.1f}"
    if r["seeds"] > 1:  # one seed has no spread
      top1 += f" ± {100 * r['top1_std']:.1f}"
      reversal += f" ± {100 * r['reversal_std']:.1f}"
    lines.append(f"| {r['variant']} | {r['seeds']} | {top1} | {reversal} | {per_seed} | "
                 f"{delta} | {welch_text} |")
  for label, t in (trend_tests or {}).items():
    lines.append(f"\nTrend over {label} in {{{', '.join(map(str, t['settings']))}}} "
                 f"(least squares of top-1 on log2 {label}, every run): "
                 f"{100 * t['slope']:+.1f} points per doubling, t = {t['t']:.2f} "
                 f"({t['dof']:.0f} dof, {t['runs']} runs), p = {_p(t['p'])}.")
  return "\n".join(lines) + "\n"


def bar_chart(rows: Sequence[Dict], path: str, data: str = "translation", steps: int = 600,
              width: int = 900, bar: int = 22):
  """Horizontal bars of mean video top-1 with ±std whiskers and the chance line (PIL)."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  label_w, top = 330, 30
  height = top + len(rows) * (bar + 8) + 30
  image = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  plot_w = width - label_w - 20

  def x_of(v):
    return label_w + v * plot_w

  draw.text((6, 8), f"video top-1 on synthetic_motion {data}, {steps} steps (mean ± std over "
            "seeds); blue: with KPSEM", fill=(0, 0, 0))
  for i, r in enumerate(rows):
    y = top + i * (bar + 8)
    color = (60, 110, 200) if r["config"] != C2D.config else (150, 150, 150)  # with KPSEM
    draw.text((6, y + 5), r["variant"], fill=(0, 0, 0))
    draw.rectangle([x_of(0), y, x_of(r["top1_mean"]), y + bar], fill=color)
    lo, hi = r["top1_mean"] - r["top1_std"], r["top1_mean"] + r["top1_std"]
    draw.line([(x_of(max(lo, 0)), y + bar / 2), (x_of(min(hi, 1)), y + bar / 2)], fill=(0, 0, 0),
              width=2)
    label = f"{100 * r['top1_mean']:.1f}%"
    if x_of(r["top1_mean"]) + 50 < width:  # right of the bar, or inside it near 100%
      draw.text((x_of(r["top1_mean"]) + 6, y + 5), label, fill=(0, 0, 0))
    else:
      draw.text((x_of(r["top1_mean"]) - 90, y + 5), label, fill=(255, 255, 255))
  for v in (0.0, 0.25, 0.5, 0.75, 1.0):
    draw.line([(x_of(v), height - 26), (x_of(v), height - 22)], fill=(0, 0, 0))
    draw.text((x_of(v) - 8, height - 18), f"{int(v * 100)}%", fill=(0, 0, 0))
  draw.line([(x_of(0.125), top - 4), (x_of(0.125), height - 26)], fill=(200, 40, 40))
  draw.text((x_of(0.125) + 3, top - 14), "chance", fill=(200, 40, 40))
  draw.line([(x_of(0.5), top - 4), (x_of(0.5), height - 26)], fill=(230, 140, 0))
  draw.text((x_of(0.5) + 3, top - 14), "order-blind ceiling", fill=(230, 140, 0))
  image.save(path)


def _publish(workdir, suite, data, steps, seeds, results, variants):
  """Writes ``results.json``, ``results.md`` and ``results.png``, each file whole.
  ``results.json``: ``seeds_requested`` (the suite's ``--seeds``), every run, the table
  (each row with its own ``seeds``) and the trend tests."""
  rows = summarize(results, variants)
  trend_tests = trends(results, variants)
  atomic.write_text(os.path.join(workdir, "results.json"), json.dumps(
      dict(suite=suite, data=data, steps=steps, seeds_requested=seeds, runs=results,
           table=rows, trends=trend_tests), indent=1))
  atomic.write_text(os.path.join(workdir, "results.md"),
                    markdown(rows, steps, data, trend_tests))
  with atomic.replacing(os.path.join(workdir, "results.png"), suffix=".png") as tmp:
    bar_chart(rows, tmp, data, steps)


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
  todo = [(v, s) for v in variants for s in range(seeds)]  # whole rows first
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
      _publish(workdir, suite, data, steps, seeds, results, variants)
  if not train and results:
    _publish(workdir, suite, data, steps, seeds, results, variants)
  if missing:
    log(f"{missing} of {len(todo)} runs are not finished and not in the table; run without "
        "--report_only to train them")
  return summarize(results, variants)


def define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_enum("suite", "ablation", sorted(SUITES), "which experiments")
  flags.DEFINE_bool("quick", False, "the core contrast (C2D vs C2D-KPSEM) with one seed: "
                    "--suite=core --seeds=1")
  flags.DEFINE_string("workdir", None, "results and one training workdir per run")
  flags.DEFINE_integer("seeds", 3, "seeds per model (0 .. seeds-1)")
  flags.DEFINE_integer("steps", 600, "training steps per run (batch 16)")
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
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  FLAGS = flags.FLAGS
  cli.prologue()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  suite, seeds = ("core", 1) if FLAGS.quick else (FLAGS.suite, FLAGS.seeds)
  if FLAGS.list:
    for v in SUITES[suite]:
      print(f"{v.group:10s} {v.name}")
    return 0
  unknown = set(FLAGS.only) - {v.name for v in SUITES[suite]}
  if unknown:
    print(f"error: --only names no variant of {suite}: {sorted(unknown)}; --list shows "
          "them", file=sys.stderr)
    return 1
  try:
    rows = run_suite(suite, FLAGS.workdir, seeds, FLAGS.steps, FLAGS.data_dir, FLAGS.only,
                     data=FLAGS.data, train=not FLAGS.report_only)
  except WorkdirMismatch as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if not rows:
    print(f"error: {FLAGS.workdir}/runs holds no finished run of --suite={suite}; run "
          "without --report_only to train them", file=sys.stderr)
    return 1
  print(open(os.path.join(FLAGS.workdir, "results.md")).read())
  print(f"table, numbers and chart in {FLAGS.workdir}/results.md, results.json, results.png")
  return 0


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
