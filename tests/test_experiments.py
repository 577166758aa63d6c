"""``python -m kpsem_jax.experiments``: runs, table, chart, resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import stats as scipy_stats

from kpsem_jax.config_base import load_config, model_spec
from kpsem_jax.experiments import report
from kpsem_jax.experiments import stats, runner
from kpsem_jax.experiments import suite as suite_lib
from kpsem_jax.train import trainer


def test_reversal_error_counts_only_time_reversed_partners():
  confusion = np.zeros((8, 8), int)
  confusion[0, 1] = 3  # move_right called move_left: reversed
  confusion[1, 1] = 5
  confusion[2, 4] = 7  # move_down called rotate_clockwise: wrong, not reversed
  confusion[5, 4] = 1  # anticlockwise called clockwise: reversed
  assert report.reversal_error(confusion) == pytest.approx(4 / 16)


def test_suite_variants_are_the_papers_ablations():
  suite = suite_lib.SUITES["ablation"]
  names = [v.name for v in suite]
  configs = {v.name: suite_lib.run_config(v, 0, 600, "/data").model for v in suite}
  assert len(names) == len(set(names)) == 13
  assert suite_lib.SUITES["core"] == [suite_lib.C2D, suite_lib.BASE] == suite[:2]
  c2d, base = configs["C2D"], configs[suite_lib.BASE.name]
  assert not c2d.use_kpsem and base.use_kpsem
  assert c2d.backbone_kwargs.temporal_kernel == 1  # time-blind
  default = dict(num_regions=4, num_sets=4, embed_dim=8, adaptive=True, kpsem_at="res2")

  def sweep(field):  # the values of `field` over the rows that differ from the base in it only
    values = []
    for m in configs.values():
      if not m.use_kpsem:
        continue
      got = dict(m.kpsem, kpsem_at=m.kpsem_at)
      if all(got[k] == v for k, v in default.items() if k != field):
        values.append(got[field])
    return sorted(values)

  assert sweep("num_regions") == [1, 4, 9, 16] and sweep("num_sets") == [1, 2, 4, 8]
  assert sweep("adaptive") == [False, True] and sweep("embed_dim") == [4, 8, 16]
  assert sweep("kpsem_at") == ["res2", "res3", "res4"]
  config = suite_lib.run_config(suite_lib.C2D, 1, 200, "/data")
  assert (config.seed, config.num_train_steps, config.dataset.data_dir) == (1, 200, "/data")
  assert config.optimizer.lr == 0.05 and config.optimizer.clip_grad_norm == 1.0
  assert config.dataset.config == "translation"
  assert suite_lib.run_config(suite_lib.C2D, 1, 200, "/data", "default").dataset.config == (
      "default")
  with pytest.raises(ValueError, match="unknown option"):
    load_config("synthetic_c2d", "c2d_kpsem,h=3")
  with pytest.raises(ValueError, match="not a stage"):
    load_config("synthetic_c2d", "c2d_kpsem,at=conv4")


def test_the_learning_rate_and_backbone_rows_differ_from_their_reference_in_one_setting():
  def settings(v):
    c = suite_lib.run_config(v, 0, 600, "/data")
    return dict(lr=c.optimizer.lr, clip=c.optimizer.clip_grad_norm, kpsem=c.model.use_kpsem,
                backbone=(c.model.backbone, c.model.backbone_kwargs.to_dict()))

  configs = {}  # a row's name is its run directory: one config per name over all suites
  for v in (v for suite in suite_lib.SUITES.values() for v in suite):
    assert configs.setdefault(v.name, v.config) == v.config, v.name
  for suite, count in (("lr", 2 + 4 + 2 * 3), ("backbones", 6)):
    rows = suite_lib.SUITES[suite]
    assert len(rows) == count
    for v in rows[2:]:
      got, want = settings(v), settings(suite_lib.reference(v))
      assert sum(got[k] != want[k] for k in got) == 1, v.name
  lr = {v.name: settings(v) for v in suite_lib.SUITES["lr"]}
  assert lr["C2D-KPSEM, lr 0.1, no clipping"] == dict(lr["C2D, lr 0.1"], kpsem=True, clip=0.0)
  no_clip = next(v for v in suite_lib.SUITES["lr"]
                 if v.name == "C2D-KPSEM, lr 0.01, no clipping")
  assert suite_lib.reference(no_clip).name == "C2D, lr 0.01, no clipping"
  backbones = [v.name for v in suite_lib.SUITES["backbones"][2:]]
  assert [n.split(" (")[0] for n in backbones] == ["Inflated ResNet", "Inflated ResNet-KPSEM",
                                                   "MFNet", "MF-KPSEM"]


def test_the_suites_clips_and_their_time_reversals_show_the_same_frames():
  """C2D averages its frames' features, so it can tell a clip from its time reversal (the
  paired class) only if the two are sampled at different moments of the motion."""
  from kpsem_jax.builders.synthetic_motion import synthetic_motion_dataset_builder as synthetic
  from kpsem_jax.data import clips as clips_lib  # pylint: disable=import-outside-toplevel
  builder_configs = {c.name: c for c in synthetic.Builder.BUILDER_CONFIGS}

  def reversal_safe(data):
    c = suite_lib.run_config(suite_lib.C2D, 0, 600, "/data", data)
    n, frames, interval = builder_configs[c.dataset.config].frames, c.clip.frames, c.clip.interval
    starts = set(range(clips_lib.train_starts(n, frames, interval)))  # training's
    starts |= set(clips_lib.clip_starts(n, frames, interval, 1).tolist())  # evaluation's
    shown = [set(clips_lib.window_indices(n, s, frames, interval).tolist()) for s in starts]
    return all(s == {n - 1 - i for i in s} for s in shown)

  assert reversal_safe("translation") and reversal_safe("translation_hard")
  assert not reversal_safe("default")  # 16 frames: 0, 2, .., 14 reversed is 1, 3, .., 15


def test_rows_are_compared_with_their_reference_by_welchs_test():
  def run(variant, top1):
    return dict(variant=variant.name, video_top1=top1, reversal_error=0.0)

  k9 = suite_lib.SUITES["ablation"][3]
  results = ([run(suite_lib.C2D, x) for x in (0.40, 0.44, 0.42)] +
             [run(suite_lib.BASE, x) for x in (0.90, 0.94, 0.92)] +
             [run(k9, x) for x in (0.80, 0.96, 0.88)])
  rows = {r["variant"]: r for r in report.summarize(results, suite_lib.SUITES["ablation"])}
  assert "delta" not in rows["C2D"]
  base = rows[suite_lib.BASE.name]
  assert base["reference"] == "C2D" and base["delta"] == pytest.approx(0.50)
  assert base["top1_std"] == pytest.approx(0.02)  # sample std (ddof=1), not 0.0163
  assert base["significant"] and base["test"]["p"] < 1e-4 and base["test"]["name"] == "Welch"
  k9_row = rows[k9.name]
  assert k9_row["reference"] == suite_lib.BASE.name and k9_row["seeds"] == 3
  assert k9_row["delta"] == pytest.approx(-0.04) and not k9_row["significant"]
  assert k9_row["test"]["t"] == pytest.approx(-0.840, abs=1e-3)  # -0.04 / sqrt(0.0064/3 + 0.0004/3)
  assert k9_row["test"]["dof"] == pytest.approx(2.25, abs=0.01)
  one_seed = report.summarize(results[:1] + results[3:4], suite_lib.SUITES["core"])
  assert one_seed[1]["test"] is None and not one_seed[1]["significant"]
  table = report.markdown(list(rows.values()), 600)
  assert "| +50.0 * vs C2D |" in table and "| -4.0 vs C2D-KPSEM |" in table
  assert "8x64x64 clips, 600 steps of 16 clips" in table  # from configs/synthetic_c2d.py


def test_welch_and_trend_equal_scipys_reference_implementations():
  rng = np.random.default_rng(0)
  for n_a, n_b in ((3, 3), (2, 5), (6, 4)):
    a, b = rng.normal(0.6, 0.05, n_a), rng.normal(0.55, 0.1, n_b)
    got = stats.welch(a, b)
    want = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert got["t"] == pytest.approx(want.statistic) and got["p"] == pytest.approx(want.pvalue)
    # Welch-Satterthwaite degrees of freedom, written out
    va, vb = np.var(a, ddof=1) / n_a, np.var(b, ddof=1) / n_b
    assert got["dof"] == pytest.approx((va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)))
  assert stats.welch([1.0, 1.0], [1.0, 1.0])["p"] == 1.0  # no spread, same mean
  assert stats.welch([1.0, 1.0], [0.5, 0.5])["p"] == 0.0
  assert stats.welch([1.0], [0.5, 0.6]) is None
  assert stats.sample_std([0.90, 0.94, 0.92]) == pytest.approx(0.02)
  settings = [1, 1, 2, 2, 4, 4, 8, 8]
  top1 = [0.80, 0.82, 0.85, 0.83, 0.90, 0.88, 0.91, 0.95]
  got = stats.trend(settings, top1)
  want = scipy_stats.linregress(np.log2(settings), top1)
  assert got["slope"] == pytest.approx(want.slope) and got["p"] == pytest.approx(want.pvalue)
  assert got["t"] == pytest.approx(want.slope / want.stderr) and got["runs"] == 8
  assert stats.trend([4, 4, 4], [0.1, 0.2, 0.3]) is None  # one setting


def test_the_k_and_g_sweeps_get_a_trend_test_over_every_run():
  variants = suite_lib.SUITES["ablation"]
  by_name = {v.name: v for v in variants}
  runs = []
  for name, top1 in (("G=1 (one AReSE set)", 0.80), ("G=2", 0.84), (suite_lib.BASE.name, 0.88),
                     ("G=8", 0.92), ("K=9", 0.5)):
    for seed, jitter in enumerate((-0.01, 0.01)):
      runs.append(dict(variant=by_name[name].name, video_top1=top1 + jitter, reversal_error=0))
  found = report.trends(runs, variants)
  assert found["G"]["settings"] == [1, 2, 4, 8] and found["G"]["runs"] == 8
  assert found["G"]["slope"] == pytest.approx(0.04) and found["G"]["p"] < 1e-3
  assert found["K"]["settings"] == [4, 9] and found["K"]["runs"] == 4  # base and K=9 only
  table = report.markdown(report.summarize(runs, variants), 600, trend_tests=found)
  assert "Trend over G in {1, 2, 4, 8}" in table and "+4.0 points per doubling" in table


def test_fixed_regions_are_drawn_per_training_seed():
  import jax  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.kpsem import KPSEM  # pylint: disable=import-outside-toplevel
  fixed = next(v for v in suite_lib.SUITES["ablation"] if v.config == "c2d_kpsem,fixed")
  splits = []
  for seed in (0, 1, 1):
    spec = model_spec(suite_lib.run_config(fixed, seed, 600, ""))
    assert spec["kpsem"]["fixed_regions_seed"] == seed and not spec["kpsem"]["adaptive"]
    module = KPSEM(**{k: v for k, v in spec["kpsem"].items()})
    f = np.random.default_rng(0).normal(size=(1, 3, 8, 8, 4)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), f)
    _, state = module.apply(variables, f, mutable=["intermediates"])
    splits.append(np.asarray(state["intermediates"]["arese"][0].splits_x))
  assert not np.allclose(splits[0], splits[1]) and np.array_equal(splits[1], splits[2])
  adaptive = model_spec(suite_lib.run_config(suite_lib.BASE, 3, 600, ""))
  assert "fixed_regions_seed" not in adaptive["kpsem"]  # unchanged for adaptive models


@pytest.mark.slow
def test_a_small_suite_writes_its_table_and_resumes_without_retraining(tmp_path, monkeypatch):
  original = suite_lib.run_config

  def tiny(variant, seed, steps, data_dir, data):
    c = original(variant, seed, steps, data_dir, data)
    c.dataset.config = "tiny"
    c.clip.update(dict(crop=24, train_scale=(24, 28), eval_resize=26))
    c.model.backbone_kwargs.base_width = 4
    c.batch_size, c.eval_batch_size = 8, 8
    return c

  monkeypatch.setattr(runner, "run_config", tiny)  # what run_one calls
  only = ["C2D", "fixed regions"]
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "suite")
  rows = runner.run_suite("ablation", workdir, seeds=2, steps=2, data_dir=data_dir,
                               only=only, log=lambda *a: None)
  assert [r["variant"] for r in rows] == only and all(r["seeds"] == 2 for r in rows)
  for row in rows:
    accs = []
    for seed in (0, 1):
      run_dir = os.path.join(workdir, "runs", f"{suite_lib.slug(row['variant'])}_seed{seed}")
      accs.append(json.load(open(os.path.join(run_dir, "eval_test_step2.json")))["video_top1"])
    assert row["top1_per_seed"] == pytest.approx(accs)
    assert row["top1_mean"] == pytest.approx(np.mean(accs))
    assert row["top1_std"] == pytest.approx(np.std(accs, ddof=1))
  table = open(os.path.join(workdir, "results.md")).read()
  assert (f"| C2D | 2 | {100 * rows[0]['top1_mean']:.1f} ± {100 * rows[0]['top1_std']:.1f} |"
          in table)
  assert Image.open(os.path.join(workdir, "results.png")).size == (900, 30 + 2 * 30 + 30)
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert len(saved["runs"]) == 4 and saved["table"] == rows and saved["seeds_requested"] == 2
  assert [(r["variant"], r["config"], r["seed"]) for r in saved["runs"]] == [
      ("C2D", "c2d", 0), ("C2D", "c2d", 1), ("fixed regions", "c2d_kpsem,fixed", 0),
      ("fixed regions", "c2d_kpsem,fixed", 1)]
  assert all(0 <= r["video_top1"] <= 1 for r in saved["runs"])
  for r in saved["runs"]:  # the confusion matrix behind each run's numbers
    confusion = np.array(r["confusion"])
    assert confusion.shape == (8, 8) and confusion.sum() == r["num_videos"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(r["video_top1"])

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(trainer, "train_and_evaluate", no_training)
  again = runner.run_suite("ablation", workdir, seeds=2, steps=2, data_dir=data_dir,
                                only=only, log=lambda *a: None)
  assert again == rows
  # A new workdir holding only the suite's results.json (as committed under docs/) resumes
  # with every recorded run finished.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  shutil.copy(os.path.join(workdir, "results.json"), fresh / "results.json")
  assert runner.run_suite("ablation", str(fresh), seeds=2, steps=2, data_dir=data_dir,
                               only=only, log=lambda *a: None) == rows
  del rows[0]["top1_per_seed"][1:]  # the table of seed 0 alone, as --report_only writes it
  os.remove(os.path.join(workdir, "runs", "C2D_seed1", "result.json"))
  logged = []
  report = runner.run_suite("ablation", workdir, seeds=2, steps=2, data_dir=data_dir,
                                 only=only, log=logged.append, train=False)
  assert report[0]["seeds"] == 1 and report[0]["top1_per_seed"] == rows[0]["top1_per_seed"]
  assert report[1] == rows[1]
  assert logged[-1].startswith("1 of 4 runs are not finished and not in the table")
  table = open(os.path.join(workdir, "results.md")).read()
  assert f"| C2D | 1 | {100 * report[0]['top1_mean']:.1f} | " in table  # one seed: no ±
  for data, steps in (("default", 2), ("translation", 3)):  # never mixed into the table
    with pytest.raises(runner.WorkdirMismatch,
                       match=r"C2D_seed0/result.json: a finished run with --data=translation "
                             r"--steps=2, not --data=\w+ --steps=\d"):
      runner.run_suite("ablation", workdir, seeds=2, steps=steps, data_dir=data_dir,
                            only=only, log=lambda *a: None, data=data)


def test_an_unknown_variant_or_an_empty_report_is_one_error_line(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-m", "kpsem_jax.experiments", "--only=K=5",
                        f"--workdir={tmp_path}"], cwd=repo, capture_output=True, text=True)
  assert run.returncode == 1 and run.stdout == ""
  assert run.stderr == ("error: --only names no variant of ablation: ['K=5']; --list shows "
                        "them\n")
  assert os.listdir(tmp_path) == []
  run = subprocess.run([sys.executable, "-m", "kpsem_jax.experiments", "--report_only",
                        f"--workdir={tmp_path}"], cwd=repo, capture_output=True, text=True)
  assert (run.returncode, os.listdir(tmp_path)) == (1, [])
  assert run.stdout.startswith("39 of 39 runs are not finished and not in the table")
  assert run.stderr == (f"error: {tmp_path}/runs holds no finished run of --suite=ablation; "
                        "run without --report_only to train them\n")


def test_quick_lists_the_core_contrast_only(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "kpsem_jax.experiments", "--quick", "--list",
                        f"--workdir={tmp_path}"], cwd=repo, capture_output=True, text=True,
                       check=True).stdout
  assert [line.split(None, 1)[1] for line in out.splitlines()] == [
      suite_lib.C2D.name, suite_lib.BASE.name]


def test_paired_test_holm_and_the_minimum_detectable_difference():
  rng = np.random.default_rng(1)
  a, b = rng.normal(0.75, 0.03, 8), rng.normal(0.73, 0.03, 8)
  got = stats.paired(a, b)
  want = scipy_stats.ttest_rel(a, b)
  assert got["t"] == pytest.approx(want.statistic) and got["p"] == pytest.approx(want.pvalue)
  interval = want.confidence_interval(0.95)
  assert (got["low"], got["high"]) == pytest.approx((interval.low, interval.high))
  assert got["mean"] == pytest.approx(np.mean(a - b)) and got["dof"] == 7
  assert stats.paired([0.5], [0.4]) is None
  # Holm: sorted p 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, made monotone, in the given order
  assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
  assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
  # One-sample t power, alpha 0.05 two-sided, power 0.8: effect 0.9958 sd at n = 10 (as
  # statsmodels' TTestPower gives), and its Monte Carlo check.
  assert stats.minimum_detectable_difference(1.0, 10) == pytest.approx(0.9958, abs=2e-3)
  assert stats.pairs_needed(1.0, 1.0) == 10
  draws = rng.normal(0.9958, 1.0, (20000, 10))
  t = draws.mean(1) / (draws.std(1, ddof=1) / np.sqrt(10))
  assert np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, 9)) == pytest.approx(0.8, abs=0.015)


def test_paired_suites_compare_seed_for_seed_and_correct_every_test():
  """The MFNet suites pair runs by seed; p-values are Holm-corrected over the table."""
  variants = suite_lib.SUITES["mfnet"]
  assert "mfnet" in suite_lib.PAIRED and "ablation" not in suite_lib.PAIRED
  top1 = {variants[0].name: [0.70, 0.74, 0.78, 0.72], variants[1].name: [0.73, 0.76, 0.81, 0.74],
          variants[2].name: [0.70, 0.75, 0.77, 0.73]}
  runs = [dict(variant=name, seed=s, video_top1=x, reversal_error=0.1)
          for name, xs in top1.items() for s, x in enumerate(xs)]
  rows = {r["variant"]: r for r in report.summarize(runs, variants, paired=True)}
  kpsem, control = rows[variants[1].name], rows[variants[2].name]
  assert kpsem["test"]["name"] == "paired t" and kpsem["test"]["pairs"] == 4
  want = scipy_stats.ttest_rel(top1[variants[1].name], top1[variants[0].name])
  assert kpsem["test"]["p"] == pytest.approx(want.pvalue)
  ps = [kpsem["test"]["p"], control["test"]["p"]]
  assert [kpsem["p_holm"], control["p_holm"]] == pytest.approx(stats.holm(ps))
  table = report.markdown(list(rows.values()), 600, "key_object_4")
  assert "paired t t = " in table and "4 pairs" in table
  unpaired = {r["variant"]: r for r in report.summarize(runs, variants)}
  assert unpaired[variants[1].name]["test"]["name"] == "Welch"


def test_the_docs_results_tables_are_what_the_report_makes_of_the_committed_json(tmp_path):
  """Every results table of docs/experiments.md and the README is generated:
  regenerating them from the committed results.json changes nothing, and a
  hand edit is caught."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  docs = [os.path.join(root, "docs", "experiments.md"), os.path.join(root, "README.md")]
  assert report.refresh_files(docs, check=True) == 0
  for path in docs:
    assert report.BEGIN in open(path).read(), path
  edited = tmp_path / "experiments.md"
  text = open(docs[0]).read()
  start = text.index(report.BEGIN)
  row = text.index("| C2D | ", start)
  edited.write_text(text[:row] + "| C2D | 9 " + text[row + 8:])
  (tmp_path / "experiments").symlink_to(os.path.join(root, "docs", "experiments"))
  assert report.refresh_files([str(edited)], check=True) == 1
  assert report.refresh_files([str(edited)]) == 0 and edited.read_text() == text
  # Each committed suite folder's results.md is what the report makes of its results.json.
  import glob  # pylint: disable=import-outside-toplevel
  folders = glob.glob(os.path.join(root, "docs", "experiments", "**", "results.json"),
                      recursive=True)
  assert len(folders) >= 20
  for path in folders:
    with open(path) as f:
      assert open(path[:-len(".json")] + ".md").read() == report.table_of(json.load(f)), path


def test_a_suite_stopped_by_a_signal_says_so_in_one_line(tmp_path):
  code = ("import sys\nfrom absl import app\nfrom kpsem_jax import preemption\n"
          "from kpsem_jax.experiments import runner\n"
          "def stopped(*args, **kwargs):\n"
          "  raise preemption.Interrupted('interrupted at step 3; saved; rerun the same "
          "command to resume', 15)\n"
          "runner.run_suite = stopped\nrunner.define_flags()\n"
          f"sys.argv = ['experiments', '--workdir={tmp_path}', '--suite=core']\n"
          "app.run(runner.main)\n")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert run.returncode == 143 and "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1] == ("interrupted at step 3; saved; rerun the same "
                                                 "command to resume")


def test_seed_and_step_counts_below_one_are_one_error_line(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for flag in ("--seeds=0", "--steps=-5"):
    run = subprocess.run([sys.executable, "-m", "kpsem_jax.experiments",
                          f"--workdir={tmp_path / 'w'}", flag], cwd=repo, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1 and run.stderr.strip().startswith(f"error: flag {flag}: "), (
        run.stderr[-2000:])
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def test_the_suites_data_are_exactly_the_generated_sets_a_run_can_use():
  from kpsem_jax.builders.synthetic_motion import synthetic_motion_dataset_builder as synthetic  # pylint: disable=import-outside-toplevel
  from kpsem_jax.experiments.suite import DATA  # pylint: disable=import-outside-toplevel
  # Every synthetic_motion config but the test-only one can be named by --data, and nothing
  # else can: a new set is usable by the suite the moment it exists.
  configs = {c.name for c in synthetic.Builder.BUILDER_CONFIGS} - {"tiny"}
  assert set(DATA) == configs


def test_a_paired_suite_runs_seed_by_seed_so_a_cut_suite_holds_whole_pairs(tmp_path,
                                                                             monkeypatch):
  order = []

  def fake_run(variant, seed, steps, data_dir, workdir, data="translation"):
    order.append((variant.name, seed))
    confusion = np.eye(8, dtype=int).tolist()
    return dict(variant=variant.name, group=variant.group, config=variant.config, seed=seed,
                data=data, steps=steps, video_top1=0.5 + 0.01 * seed, reversal_error=0.0,
                num_videos=8, seconds=1.0, confusion=confusion)

  monkeypatch.setattr(runner, "run_one", fake_run)
  quiet = lambda *a: None  # noqa: E731
  runner.run_suite("mfnet", str(tmp_path / "paired"), seeds=2, steps=2, log=quiet,
                   data="key_object_faint_test_100")
  names = [v.name for v in suite_lib.SUITES["mfnet"]]
  assert order == [(n, s) for s in range(2) for n in names]
  # The table names the suite's own clips (MFNet's 96x96), not the C2D's.
  assert "8x96x96 clips, 2 steps" in (tmp_path / "paired" / "results.md").read_text()
  order.clear()
  runner.run_suite("ablation", str(tmp_path / "rows"), seeds=2, steps=2, log=quiet,
                   only=["C2D", "fixed regions"])
  assert order == [("C2D", 0), ("C2D", 1), ("fixed regions", 0), ("fixed regions", 1)]
