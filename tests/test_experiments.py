"""``python -m kpsem_jax.experiments``: runs, table, chart, resume."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from kpsem_jax import experiments, trainer


def test_reversal_error_counts_only_time_reversed_partners():
  confusion = np.zeros((8, 8), int)
  confusion[0, 1] = 3  # move_right called move_left: reversed
  confusion[1, 1] = 5
  confusion[2, 4] = 7  # move_down called rotate_clockwise: wrong, not reversed
  confusion[5, 4] = 1  # anticlockwise called clockwise: reversed
  assert experiments.reversal_error(confusion) == pytest.approx(4 / 16)


def test_suite_variants_are_the_papers_ablations():
  names = [v.name for v in experiments.SUITES["ablation"]]
  by_name = {v.name: v for v in experiments.SUITES["ablation"]}
  assert len(names) == len(set(names)) == 11
  assert by_name["C2D"].kpsem is None and by_name["MFNet"].kpsem is None
  assert by_name["C2D"].backbone["backbone_kwargs"]["temporal_kernel"] == 1  # time-blind
  regions = sorted(v.kpsem["num_regions"] for v in by_name.values()
                   if v.backbone is experiments.C2D and v.kpsem and v.kpsem.get("adaptive", True)
                   and v.kpsem["num_sets"] == 4)
  sets = sorted(v.kpsem["num_sets"] for v in by_name.values()
                if v.backbone is experiments.C2D and v.kpsem and v.kpsem["num_regions"] == 4
                and v.kpsem.get("adaptive", True))
  assert regions == [1, 4, 9, 16] and sets == [1, 2, 4, 8]
  assert by_name["C2D-KPSEM fixed regions"].kpsem["adaptive"] is False


@pytest.mark.slow
def test_a_small_suite_writes_its_table_and_resumes_without_retraining(tmp_path, monkeypatch):
  original = experiments.run_config

  def tiny(variant, seed, steps, data_dir):
    c = original(variant, seed, steps, data_dir)
    c.dataset.config = "tiny"
    c.clip.update(dict(crop=24, train_scale=(24, 28), eval_resize=26))
    c.batch_size, c.eval_batch_size = 8, 8
    return c

  monkeypatch.setattr(experiments, "run_config", tiny)
  only = ["C2D", "C2D-KPSEM fixed regions"]
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "suite")
  rows = experiments.run_suite("ablation", workdir, seeds=2, steps=2, data_dir=data_dir,
                               only=only, log=lambda *a: None)
  assert [r["variant"] for r in rows] == only and all(r["seeds"] == 2 for r in rows)
  for row in rows:
    accs = []
    for seed in (0, 1):
      run_dir = os.path.join(workdir, "runs", f"{experiments.slug(row['variant'])}_seed{seed}")
      accs.append(json.load(open(os.path.join(run_dir, "eval_test_step2.json")))["video_top1"])
    assert row["top1_per_seed"] == pytest.approx(accs)
    assert row["top1_mean"] == pytest.approx(np.mean(accs))
    assert row["top1_std"] == pytest.approx(np.std(accs))
  table = open(os.path.join(workdir, "results.md")).read()
  assert f"| C2D | {100 * rows[0]['top1_mean']:.1f} ± {100 * rows[0]['top1_std']:.1f} |" in table
  assert Image.open(os.path.join(workdir, "results.png")).size == (900, 30 + 2 * 30 + 30)
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert len(saved["runs"]) == 4 and saved["table"] == rows

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(trainer, "train_and_evaluate", no_training)
  again = experiments.run_suite("ablation", workdir, seeds=2, steps=2, data_dir=data_dir,
                                only=only, log=lambda *a: None)
  assert again == rows
