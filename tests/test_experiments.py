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
  configs = {v.name: experiments.run_config(v, 0, 450, "/data").model
             for v in experiments.SUITES["ablation"]}
  assert len(names) == len(set(names)) == 11
  assert not configs["C2D"].use_kpsem and not configs["MFNet"].use_kpsem
  assert configs["C2D"].backbone_kwargs.temporal_kernel == 1  # time-blind
  c2d_kpsem = [m.kpsem for m in configs.values() if m.backbone == "resnet3d" and m.use_kpsem]
  regions = sorted(k["num_regions"] for k in c2d_kpsem
                   if k.get("adaptive", True) and k["num_sets"] == 4)
  sets = sorted(k["num_sets"] for k in c2d_kpsem
                if k.get("adaptive", True) and k["num_regions"] == 4)
  assert regions == [1, 4, 9, 16] and sets == [1, 2, 4, 8]
  assert configs["C2D-KPSEM fixed regions"].kpsem["adaptive"] is False
  config = experiments.run_config(experiments.SUITES["ablation"][0], 1, 200, "/data")
  assert (config.seed, config.num_train_steps, config.dataset.data_dir) == (1, 200, "/data")
  with pytest.raises(ValueError, match="unknown option"):
    trainer.load_config("ablation", "c2d_kpsem,h=3")


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
