"""The experiment suite's report: per-row statistics, trend tests, the markdown table, the
bar chart, and ``results.json`` / ``results.md`` / ``results.png`` written whole."""

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from kpsem_jax import atomic
from kpsem_jax.experiments import stats
from kpsem_jax.experiments.suite import (BASE, C2D, DATA, Variant, reference, run_config,
                                         sweep_setting)


def reversal_error(confusion: np.ndarray) -> float:
  """Share of videos labelled as their time-reversed class (classes 2k <-> 2k+1)."""
  n = confusion.shape[0] - confusion.shape[0] % 2
  swapped = sum(confusion[i, i ^ 1] for i in range(n))
  return float(swapped / max(confusion.sum(), 1))


def summarize(results: Sequence[Dict], variants: Sequence[Variant],
              paired: bool = False, trend_tests: Optional[Dict[str, Dict]] = None
              ) -> List[Dict]:
  """One row per variant with runs: the number of seeds, mean and sample std (ddof=1) over
  them, and against its :func:`reference` row the difference of mean top-1 and a test:
  Welch's t-test (``test["name"] == "Welch"``: t, dof, two-sided p; None below two seeds
  on either side), or with ``paired`` the paired t-test over the seeds both rows have
  (``"paired t"``: also the mean paired difference and its 95% interval). ``p_holm``: the
  Holm-corrected p over every test of the table; ``significant`` where it is below 0.05.
  Rows with split lines (``split_movement`` in their runs) get their means."""
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
                        top1_per_seed=[float(x) for x in top1],
                        seed_list=[int(r.get("seed", i)) for i, r in enumerate(runs)])
    moved = [r["split_movement"] for r in runs if "split_movement" in r]
    if moved:
      rows[v.name]["split_movement"] = {k: float(np.mean([m[k] for m in moved]))
                                        for k in moved[0]}
  for v in variants:
    ref = _reference_name(v)
    if v.name not in rows or ref is None or ref not in rows:
      continue
    row, base = rows[v.name], rows[ref]
    if paired:
      mine = dict(zip(row["seed_list"], row["top1_per_seed"]))
      theirs = dict(zip(base["seed_list"], base["top1_per_seed"]))
      common = sorted(set(mine) & set(theirs))
      test = stats.paired([mine[s] for s in common], [theirs[s] for s in common])
      if test is not None:
        test = dict(test, name="paired t", pairs=len(common))
    else:
      test = stats.welch(row["top1_per_seed"], base["top1_per_seed"])
      if test is not None:
        test = dict(test, name="Welch")
    row.update(reference=ref, delta=row["top1_mean"] - base["top1_mean"], test=test)
  tested = [r for r in rows.values() if r.get("test")]
  family = [r["test"]["p"] for r in tested] + [t["p"] for t in (trend_tests or {}).values()]
  corrected = stats.holm(family) if family else []
  for r, p in zip(tested, corrected):
    r["p_holm"] = p
  for t, p in zip((trend_tests or {}).values(), corrected[len(tested):]):
    t["p_holm"] = p
  for r in rows.values():
    if "delta" in r:
      r["significant"] = bool(r.get("p_holm", 1.0) < stats.SIGNIFICANCE)
  return list(rows.values())


def _reference_name(v: Variant) -> Optional[str]:
  """The name of the row ``v`` is compared with: its own ``versus`` (resolved among the
  rows at hand), else :func:`reference`'s."""
  if v.root:
    return None
  if v.versus:
    return v.versus
  ref = reference(v)
  return ref.name if ref else None


def trends(results: Sequence[Dict], variants: Sequence[Variant]) -> Dict[str, Dict]:
  """Per sweep (``K`` regions, ``G`` sets) with runs at two settings or more: the trend of
  top-1 over every run of the sweep (:func:`kpsem_jax.experiments.stats.trend`)."""
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


def _pe(p: float) -> str:
  """``= 0.177`` or ``< 0.001``."""
  return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def markdown(rows: Sequence[Dict], steps: int, data: str = "translation",
             trend_tests: Optional[Dict[str, Dict]] = None) -> str:
  # The clip and batch of the table's first row (every row of a suite shares them).
  first = Variant(rows[0]["variant"], rows[0]["group"], rows[0]["config"]) if rows else C2D
  c = run_config(first, 0, steps, "", data)
  moved = any("split_movement" in r for r in rows)
  lines = [f"{DATA[data]}, {c.clip.frames}x{c.clip.crop}x{c.clip.crop} clips, {steps} steps "
           f"of {c.batch_size} clips; mean ± sample std "
           "(ddof=1) over the seeds of each row. Δ: difference of mean top-1 to the row "
           "named; test: Welch's two-sided t-test of the two rows' per-seed top-1, or the "
           "paired t-test seed for seed (with the mean paired difference and its 95% "
           "interval), p and the Holm-corrected p over every test of the table; * where "
           f"the corrected p < {stats.SIGNIFICANCE}."
           + (" Split lines: mean distance of the adaptive split lines from their start, "
              "and their standard deviation across videos, in feature-map pixels (128 test "
              "videos a run)." if moved else ""), "",
           "| model | seeds | video top-1 (%) | reversal error (%) | per seed (%) | "
           "Δ top-1 (points) | test | p (Holm) |" + (" split lines moved / across videos "
                                                      "(px) |" if moved else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|" if moved else "")]
  for r in rows:
    per_seed = ", ".join(f"{100 * x:.1f}" for x in r["top1_per_seed"])
    delta = (f"{100 * r['delta']:+.1f}{' *' if r['significant'] else ''} vs "
             f"{_short(r['reference'])}" if "delta" in r else "")
    test, test_text, p_text = r.get("test"), "", ""
    if test:
      test_text = f"{test['name']} t = {test['t']:.2f} ({test['dof']:.1f} dof)"
      if test["name"] == "paired t":
        test_text += (f", {test['pairs']} pairs, Δ {100 * test['mean']:+.1f} "
                      f"[{100 * test['low']:+.1f}, {100 * test['high']:+.1f}]")
      p_text = f"{_p(test['p'])} ({_p(r['p_holm'])})"
    top1, reversal = f"{100 * r['top1_mean']:.1f}", f"{100 * r['reversal_mean']:.1f}"
    if r["seeds"] > 1:  # one seed has no spread
      top1 += f" ± {100 * r['top1_std']:.1f}"
      reversal += f" ± {100 * r['reversal_std']:.1f}"
    line = (f"| {r['variant']} | {r['seeds']} | {top1} | {reversal} | {per_seed} | {delta} | "
            f"{test_text} | {p_text} |")
    if moved:
      m = r.get("split_movement")
      line += f" {m['from_start']:.2f} / {m['across_videos']:.2f} |" if m else " |"
    lines.append(line)
  for label, t in (trend_tests or {}).items():
    lines.append(f"\nTrend over {label} in {{{', '.join(map(str, t['settings']))}}} "
                 f"(least squares of top-1 on log2 {label}, every run): "
                 f"{100 * t['slope']:+.1f} points per doubling, t = {t['t']:.2f} "
                 f"({t['dof']:.0f} dof, {t['runs']} runs), p = {_p(t['p'])}"
                 + (f" (Holm: {_p(t['p_holm'])})." if "p_holm" in t else "."))
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


def table_of(results_json: Dict) -> str:
  """The markdown table of a suite's ``results.json`` (its runs and the rows it had), made
  again by :func:`summarize` and :func:`markdown`: what the docs show of it."""
  variants = [Variant(r["variant"], r["group"], r["config"], versus=r.get("reference"),
                      root="reference" not in r) for r in results_json["table"]]
  runs = results_json["runs"]
  trend_tests = trends(runs, variants)
  rows = summarize(runs, variants, bool(results_json.get("paired", False)), trend_tests)
  return markdown(rows, results_json["steps"], results_json.get("data", "default"),
                  trend_tests)


BEGIN, END = "<!-- results table: ", "<!-- end of results table -->"
PAPER_BEGIN, PAPER_END = "<!-- paper comparison -->", "<!-- end of paper comparison -->"

_B = BASE.name
# The paper's contrasts beside ours: (contrast, the paper's numbers, the paper's sign of
# row minus reference, our results.json relative to docs/, our row, our reference row or
# a trend's "K"/"G").
PAPER_CONTRASTS = (
    ("R3D (time-blind, 1xkxk) -> R3D-KPSEM (Table 2d); ours: C2D -> C2D-KPSEM",
     "62.0% -> 65.8% (+3.8)", 1, "experiments/steps100/results.json", _B, C2D.name),
    ("single key point (K=1) vs K=4 (Table 2a)", "72.1% vs 74.0% (-1.9)", -1,
     "experiments/steps100/results.json", "K=1 (single key point)", _B),
    ("fixed vs adaptive regions (Table 2b)", "72.5% vs 74.0% (-1.5)", -1,
     "experiments/steps100/results.json", "fixed regions", _B),
    ("one AReSE set vs G=8 (Table 2c); ours vs G=4", "72.4% vs 74.0% (-1.6)", -1,
     "experiments/steps100/results.json", "G=1 (one AReSE set)", _B),
    ("G sweep (Fig. 5c)", "rises with G up to 8", 1, "experiments/steps100/results.json",
     "G", None),
    ("K sweep (Fig. 5b)", "K = 4 best; every K > 1 above K = 1", 1,
     "experiments/steps100/results.json", "K", None),
    ("later position (Fig. 5a: conv4 vs conv2); ours: res3 vs res2", "+1.5", 1,
     "experiments/steps100/results.json", "KPSEM after res3", _B),
    ("MFNet -> MF-KPSEM (Table 2); ours: KPSEM after conv2, 100 steps",
     "70.8% -> 74.0% (+3.2)", 1, "experiments/backbones100/results.json", "MF-KPSEM",
     "MFNet"),
)


def _ordering(sign: int, delta: float, p_holm: float) -> str:
  if abs(delta) < 0.001:  # under a tenth of a point
    return "no difference here"
  same = (delta > 0) == (sign > 0)
  resolved = p_holm < stats.SIGNIFICANCE
  return (("agrees" if same else "opposite") + (", resolved" if resolved else
                                                ", not resolved (Holm p >= 0.05)"))


def paper_comparison(root: str) -> str:
  """The markdown table of :data:`PAPER_CONTRASTS`, ours read from the results.json files
  under ``root`` (``docs/``)."""
  lines = ["| contrast | paper (MFNet, HMDB51 split 1) | ours | ordering |", "|---|---|---|---|"]
  for label, paper, sign, path, row, ref in PAPER_CONTRASTS:
    with open(os.path.join(root, path)) as f:
      results_json = json.load(f)
    variants = [Variant(r["variant"], r["group"], r["config"], versus=r.get("reference"),
                        root="reference" not in r) for r in results_json["table"]]
    trend_tests = trends(results_json["runs"], variants)
    rows = {r["variant"]: r for r in summarize(results_json["runs"], variants,
                                                bool(results_json.get("paired")), trend_tests)}
    where = f"`{os.path.dirname(path)}`"
    if ref is None:  # a trend
      t = trend_tests[row]
      ours = (f"{100 * t['slope']:+.1f} points per doubling of {row}, p {_pe(t['p'])} "
              f"(Holm {_pe(t['p_holm'])}); {where}")
      lines.append(f"| {label} | {paper} | {ours} | {_ordering(sign, t['slope'], t['p_holm'])} |")
      continue
    r, base = rows[row], rows[ref]
    ours = (f"{100 * r['top1_mean']:.1f}% vs {100 * base['top1_mean']:.1f}% "
            f"({100 * r['delta']:+.1f}, p {_pe(r['test']['p'])}, Holm {_pe(r['p_holm'])}); "
            f"{where}")
    lines.append(f"| {label} | {paper} | {ours} | {_ordering(sign, r['delta'], r['p_holm'])} |")
  return "\n".join(lines) + "\n"


def refresh_tables(text: str, root: str) -> str:
  """``text`` (markdown) with every region from ``<!-- results table: PATH -->`` to
  ``<!-- end of results table -->`` replaced by :func:`table_of` the JSON at PATH
  (relative to ``root``)."""
  out, rest = [], text
  while BEGIN in rest:
    head, _, tail = rest.partition(BEGIN)
    path, _, tail = tail.partition(" -->")
    if END not in tail:
      raise ValueError(f"{BEGIN}{path} -->: no {END} after it")
    _, _, rest = tail.partition(END)
    with open(os.path.join(root, path.strip())) as f:
      table = table_of(json.load(f))
    out.append(f"{head}{BEGIN}{path} -->\n{table}{END}")
  text = "".join(out) + rest
  if PAPER_BEGIN in text:
    head, _, tail = text.partition(PAPER_BEGIN)
    if PAPER_END not in tail:
      raise ValueError(f"{PAPER_BEGIN}: no {PAPER_END} after it")
    _, _, tail = tail.partition(PAPER_END)
    text = f"{head}{PAPER_BEGIN}\n{paper_comparison(root)}{PAPER_END}{tail}"
  return text


def publish(workdir, suite, data, steps, seeds, results, variants, paired=False):
  """Writes ``results.json``, ``results.md`` and ``results.png``, each file whole.
  ``results.json``: ``seeds_requested`` (the suite's ``--seeds``), ``paired``, every run,
  the table (each row with its own ``seeds``) and the trend tests."""
  trend_tests = trends(results, variants)
  rows = summarize(results, variants, paired, trend_tests)
  atomic.write_text(os.path.join(workdir, "results.json"), json.dumps(
      dict(suite=suite, data=data, steps=steps, seeds_requested=seeds, paired=paired,
           runs=results, table=rows, trends=trend_tests), indent=1))
  atomic.write_text(os.path.join(workdir, "results.md"),
                    markdown(rows, steps, data, trend_tests))
  with atomic.replacing(os.path.join(workdir, "results.png"), suffix=".png") as tmp:
    bar_chart(rows, tmp, data, steps)


def refresh_files(paths, check: bool = False) -> int:
  """Rewrites (or, with ``check``, compares) the results tables of the markdown files
  ``paths`` from their ``results.json``; 1 when ``check`` found a stale one, else 0."""
  import sys  # pylint: disable=import-outside-toplevel
  stale = []
  for path in paths:
    text = open(path).read()
    fresh = refresh_tables(text, os.path.dirname(os.path.abspath(path)))
    if fresh != text:
      if check:
        stale.append(path)
      else:
        atomic.write_text(path, fresh)
  for path in stale:
    print(f"error: {path}: its results tables differ from their results.json; run "
          f"python -m kpsem_jax.experiments.report {path}", file=sys.stderr)
  return 1 if stale else 0


def main(argv) -> int:
  """``python -m kpsem_jax.experiments.report [--check] FILE.md ...``."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  with cli.one_line_errors(doing="refreshing the results tables"):
    return refresh_files(argv[1:], flags.FLAGS.check)


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_bool("check", False, "compare the tables instead of rewriting them; exit 1 "
                    "when one is stale")


if __name__ == "__main__":
  from kpsem_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)
