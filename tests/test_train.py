"""train.py's loop: learning, resume, divergence, evaluation, configs, sharded equivalence."""

import datetime
import json
import os
import subprocess
import sys

import jax
from flax import traverse_util
import numpy as np
import pytest

from kpsem_jax.config_base import load_config, model_spec
from kpsem_jax.models import cpu_kernels
from kpsem_jax.models.classifier import create_model, normalize
from kpsem_jax.testing import fake_devices, tiny_models
from kpsem_jax.train import checkpoint, evaluation, trainer, workdir_eval
from kpsem_jax.train import train_step as ts
from kpsem_jax.train.optimizer import create_optimizer, lr_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


load_config = load_config


tiny_config = tiny_models.train_config


def read_metrics(workdir, prefix="train/loss"):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [(r["step"], r[prefix]) for r in rows if prefix in r]


_GLOBAL_BATCH = trainer.Trainer.global_batch


def recording_batches(monkeypatch, seen, interrupt_at=None):
  """Records each step's video indices; raises KeyboardInterrupt at call ``interrupt_at``."""
  original = _GLOBAL_BATCH

  def recording(self, batch):
    if interrupt_at is not None and len(seen) + 1 == interrupt_at:
      raise KeyboardInterrupt
    seen.append(batch["video_index"].tolist())
    return original(self, batch)

  monkeypatch.setattr(trainer.Trainer, "global_batch", recording)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config(data_dir)
  batches = []
  with pytest.MonkeyPatch.context() as monkeypatch:
    recording_batches(monkeypatch, batches)
    evaluate = trainer.Trainer.evaluate

    def counted(self, *args, **kwargs):
      EVALUATIONS.append(kwargs.get("desc"))
      return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "evaluate", counted)
    final = trainer.train_and_evaluate(config, workdir)
  return config, workdir, final, batches


EVALUATIONS = []  # the straight run's evaluations, by their progress bar's name


def test_loss_goes_down_and_outputs_are_written(straight_run):
  _, workdir, final, _ = straight_run
  # one evaluation of the last step: the final result reuses the periodic one
  assert EVALUATIONS == ["eval@12"]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  elapsed = [r["elapsed_s"] for r in rows]
  assert elapsed == sorted(elapsed) and elapsed[-1] > 0
  stamps = [datetime.datetime.fromisoformat(r["time"]) for r in rows]
  assert all(s.tzinfo is not None for s in stamps) and stamps == sorted(stamps)
  # The confusion matrix explains itself: its PNG carries the class names and the counts
  # (the CSV's), and is larger than the bare cells (names, titles, colour bar); it is also
  # a TensorBoard image.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  picture = Image.open(os.path.join(workdir, "eval_test_step12_confusion.png"))
  names = json.load(open(os.path.join(workdir, "eval_test_step12.json")))["class_names"]
  assert json.loads(picture.text["class_names"]) == names and len(names) == 8
  np.testing.assert_array_equal(
      json.loads(picture.text["counts"]),
      np.loadtxt(os.path.join(workdir, "eval_test_step12_confusion.csv"), delimiter=","))
  assert picture.text["title"] == "test split, step 12: confusion matrix"
  assert picture.size[0] > 8 * 40 and picture.size[1] > 8 * 40
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  tags = []
  folder = os.path.join(workdir, "tensorboard")
  for name in os.listdir(folder):
    data = open(os.path.join(folder, name), "rb").read()
    while data:
      length = int.from_bytes(data[:8], "little")
      event = event_pb2.Event.FromString(data[12:12 + length])
      tags += [v.tag for v in event.summary.value if v.HasField("image")]
      data = data[12 + length + 4:]
  assert "test/confusion" in tags
  losses = [loss for _, loss in read_metrics(workdir)]
  assert len(losses) == 12  # 3 epochs of the 32 tiny videos, 8 per batch
  assert np.mean(losses[8:]) < np.mean(losses[:4]) - 0.2  # third epoch vs first
  for name in ("config.json", "eval_test_step12.json", "eval_test_step12_confusion.csv",
               "eval_test_step12_confusion.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir,
                                                                                   "tensorboard")))
  saved = json.load(open(os.path.join(workdir, "eval_test_step12.json")))
  assert saved["num_videos"] == 16 and saved["video_top1"] == final["video_top1"]
  assert np.loadtxt(os.path.join(workdir, "eval_test_step12_confusion.csv"),
                    delimiter=",").sum() == 16


def test_eval_mode_reproduces_the_final_metrics(straight_run):
  config, workdir, final, _ = straight_run
  again = workdir_eval.evaluate_workdir(config, workdir)
  assert again["video_top1"] == final["video_top1"]
  np.testing.assert_array_equal(again["confusion"], final["confusion"])


def test_checkpoint_serves_the_predictor(straight_run):
  _, workdir, _, _ = straight_run
  variables, meta = checkpoint.load_variables(workdir)
  assert meta["step"] == 12 and len(meta["class_names"]) == 8
  assert set(variables) == {"params", "batch_stats"}


def test_the_same_config_and_seed_reproduce_a_run_bit_for_bit(straight_run, tmp_path):
  """Seed-for-seed reproducibility: the same command in a fresh workdir gives the same
  losses, the same evaluation and the same parameters, to the last bit."""
  config, straight_dir, final, _ = straight_run
  again_dir = str(tmp_path / "again")
  again = trainer.train_and_evaluate(config, again_dir)
  assert read_metrics(again_dir) == read_metrics(straight_dir)
  assert again["video_top1"] == final["video_top1"]
  np.testing.assert_array_equal(again["confusion"], final["confusion"])
  straight, _ = checkpoint.load_variables(straight_dir)
  rerun, _ = checkpoint.load_variables(again_dir)
  assert checkpoint.digest(rerun) == checkpoint.digest(straight)


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_batches_and_parameters(straight_run, tmp_path,
                                                               monkeypatch):
  config, straight_dir, _, straight_batches = straight_run
  workdir = str(tmp_path / "resumed")
  first = []  # killed while fetching the 5th batch: step 4 ran, the last checkpoint is step 3
  recording_batches(monkeypatch, first, interrupt_at=5)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, workdir)
  assert len(first) == 4
  second = []
  recording_batches(monkeypatch, second)
  trainer.train_and_evaluate(config, workdir)  # the same command again: resumes at step 3
  assert first[:3] + second == straight_batches
  straight, _ = checkpoint.load_variables(straight_dir)
  resumed, _ = checkpoint.load_variables(workdir)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # One row per logged step, although steps 4 and 5 ran twice.
  assert [s for s, _ in read_metrics(workdir)] == list(range(1, 13))
  resumed_log, straight_log = read_metrics(workdir)[-3:], read_metrics(straight_dir)[-3:]
  assert [s for s, _ in resumed_log] == [s for s, _ in straight_log] == [10, 11, 12]
  np.testing.assert_allclose([l for _, l in resumed_log], [l for _, l in straight_log], rtol=1e-4)


def test_resuming_with_other_workers_or_data_settings_keeps_every_checkpoint(
    straight_run, tmp_path, capsys):
  """The data position is the step: a resume with another num_workers reads the same
  batches, one with another seed says that its batches differ; neither is damage."""
  config, straight_dir, _, straight_batches = straight_run
  workdir = str(tmp_path / "changed")
  short = config.copy_and_resolve_references()
  short.num_train_steps = short.eval_every = 3
  trainer.train_and_evaluate(short, workdir)
  more = config.copy_and_resolve_references()
  more.num_train_steps = more.eval_every = 6
  more.num_workers = 2
  with pytest.MonkeyPatch.context() as monkeypatch:
    seen = []
    recording_batches(monkeypatch, seen)
    trainer.train_and_evaluate(more, workdir)
  out = capsys.readouterr().out
  assert "resuming from step 3" in out and "data settings differ" not in out
  assert seen == straight_batches[3:6]  # 2 worker processes, the same batches
  reseeded = more.copy_and_resolve_references()
  reseeded.num_train_steps = reseeded.eval_every = 9
  reseeded.seed = 1
  trainer.train_and_evaluate(reseeded, workdir)
  out = capsys.readouterr().out
  assert "resuming from step 6" in out
  assert ("the data settings differ from the checkpoint's (config.seed: checkpoint 0, config "
          "1): from step 7 on, the batches differ from an uninterrupted run's") in out
  assert not os.path.exists(os.path.join(workdir, "damaged"))
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit())[-1] == 9
  assert [s for s, _ in read_metrics(workdir)] == list(range(1, 10))  # history kept


@pytest.mark.slow
def test_divergence_stops_with_a_clear_error_and_keeps_good_checkpoints(tmp_path, straight_run):
  config, _, _, _ = straight_run
  config = config.copy_and_resolve_references()
  config.num_train_steps = 8
  config.checkpoint_every = 2
  config.optimizer.update(dict(lr=0.02, decay_steps=(4,), decay_factor=1e38))
  workdir = str(tmp_path / "run")
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(config, workdir)
  message = str(error.value)
  step = int(message.split(" at step ")[1].split(";")[0])
  assert step > 4 and "lower config.optimizer.lr" in message
  assert "the loss became" in message or "a parameter became non-finite" in message
  good = int(message.split("the last good checkpoint is step ")[1].split(" ")[0])
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved[-1] == good < step
  variables, _ = checkpoint.load_variables(workdir)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(variables))


@pytest.mark.slow
def test_a_non_finite_update_is_never_checkpointed_even_with_a_finite_loss(tmp_path,
                                                                           straight_run,
                                                                           monkeypatch):
  """An update with a NaN lr leaves the step's loss finite (it is computed before
  the update) and every parameter NaN; with a checkpoint every step, the last good
  checkpoint is the step before, and it is finite."""
  config, _, _, _ = straight_run
  config = config.copy_and_resolve_references()
  config.num_train_steps = 6
  config.checkpoint_every = 1
  config.log_every = 100
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  # the lr turns NaN at the fourth step (optax's schedules refuse a NaN factor)
  monkeypatch.setattr(trainer, "lr_schedule",
                      lambda c: lambda step: jnp.where(step >= 3, jnp.nan, 0.02))
  workdir = str(tmp_path / "run")
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert message.startswith("a parameter became non-finite at step 4; stopping: the last "
                            "good checkpoint is step 3"), message
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved[-1] == 3
  variables, _ = checkpoint.load_variables(workdir)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(variables))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters(straight_run):
  import jax.numpy as jnp
  config, _, _, _ = straight_run
  spec = model_spec(config)
  model = create_model(**spec, batch_norm_axis=ts.DATA_AXIS)
  rng = np.random.default_rng(0)
  clips = jnp.asarray(rng.integers(0, 255, (1, 8, 8, 24, 24, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 8, (1, 8)), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), clips[0])
  tx = create_optimizer(config)
  state = ts.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                             variables["batch_stats"], tx.init(variables["params"]))
  losses = {}
  mesh = ts.data_mesh(jax.devices()[:1])
  for dtype in (jnp.float32, jnp.bfloat16):
    step = ts.make_train_step(model, tx, lr_schedule(config), dtype, mesh)
    new, metrics = step(jax.tree.map(jnp.copy, state), clips, labels)  # the state is donated
    losses[dtype] = float(metrics["loss"])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new.params))
  assert abs(losses[jnp.bfloat16] - losses[jnp.float32]) < 0.05 * losses[jnp.float32]


def test_cli_overrides_and_names_the_prepare_command(tmp_path):
  out = subprocess.run(
      [sys.executable, "train.py", "--config=configs/hmdb51.py", f"--workdir={tmp_path / 'w'}",
       f"--config.dataset.data_dir={tmp_path / 'nothing'}", "--config.dataset.config=split2",
       "--config.init_from="],  # the config's own fields are checked first
      cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  assert (f"error: the hmdb51 dataset (split2) is not prepared in {tmp_path / 'nothing'}. Build it "
          f"with:\n  python -m kpsem_jax.prepare hmdb51 --source_dir=<the dataset as distributed> "
          f"--data_dir={tmp_path / 'nothing'} --split=2") in out.stderr


def test_video_level_aggregation_on_hand_built_logits():
  # Video 0 (label 1): its views disagree, the mean softmax picks class 1.
  # Video 1 (label 2): both views say class 0 (wrong). Video 2 (label 0): right.
  logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.4, 0.1],
                            [0.7, 0.1, 0.2], [0.6, 0.3, 0.1],
                            [0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]))
  video_index = np.array([5, 5, 9, 9, 2, 2])
  labels = np.array([1, 1, 2, 2, 0, 0])
  m = evaluation.video_metrics(logits, video_index, labels, 3)
  assert m["video_top1"] == pytest.approx(2 / 3)
  assert m["clip_top1"] == pytest.approx(3 / 6)
  assert m["video_top5"] == 1.0
  np.testing.assert_array_equal(m["confusion"], [[1, 0, 0], [0, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(m["per_class_accuracy"], [1.0, 1.0, 0.0])
  _, probs, _ = evaluation.aggregate(logits, video_index, labels)
  np.testing.assert_allclose(probs[0], [0.8 + 0.9, 0.15, 0.15] / np.float64(2))  # video 2


def test_paper_configs():
  for name, batch, classes in (("hmdb51", 128, 51), ("ucf101", 80, 101),
                               ("mini_kinetics", 64, 200), ("something_v1", 64, 174)):
    c = load_config(name)
    assert (c.batch_size, c.dataset.num_classes) == (batch, classes), name
    assert c.model.kpsem.to_dict() == dict(num_regions=4, num_sets=8, embed_dim=24, adaptive=True,
                                           match_gradient="splits")
    assert c.model.kpsem_at == "conv4" and c.clip.frames == 16 and c.clip.crop == 224
    o = c.optimizer
    assert (o.lr, o.momentum, o.weight_decay, o.pretrained_lr_mult) == (0.005, 0.9, 1e-4, 0.2)
    # the default gradient's stabilisers are part of every dataset config
    assert (o.kpsem_clip_grad_norm, o.split_mlp_adam_lr, o.clip_grad_norm) == (1.0, 0.003, 0.0)
    assert c.init_from
  kinetics = load_config("kinetics400")  # the pretraining of the released MFNet
  assert (kinetics.dataset.name, kinetics.dataset.num_classes) == ("kinetics400", 400)
  assert model_spec(kinetics)["kpsem"] is None and not kinetics.init_from
  assert (kinetics.clip.frames, kinetics.clip.interval, kinetics.clip.crop) == (16, 2, 224)
  assert load_config("something_v1").clip.flip is False
  assert load_config("synthetic").clip.flip is False
  schedule = lr_schedule(load_config("hmdb51"))
  assert [float(schedule(s)) for s in (0, 99, 100, 1999, 2000, 3200)] == pytest.approx(
      [0.0025, 0.0025, 0.005, 0.005, 0.0005, 0.00005])


SHARDED_SCRIPT = r"""
import os, sys, json, re
import jax, jax.numpy as jnp, numpy as np
from kpsem_jax import jax_options
from kpsem_jax.config_base import model_spec
from kpsem_jax.models.classifier import create_model
from kpsem_jax.testing import tiny_models
from kpsem_jax.train import train_step as ts
from kpsem_jax.train import trainer
from kpsem_jax.train.optimizer import create_optimizer, lr_schedule
jax_options.configure()
assert jax.device_count() == 8, jax.devices()
config = tiny_models.train_config({data_dir!r})
rng = np.random.default_rng(0)
# 2 micro-batches of 8 clips: gradient accumulation over the shards too.
clips = rng.integers(0, 255, (2, 8, 8, 24, 24, 3), dtype=np.uint8)
labels = rng.integers(0, 8, (2, 8)).astype(np.int32)
results = []
# KPSEM's model, whose trunk is the plain backbone (a run of the backbone alone added only
# compile time), under the CPU kernels (auto) and pure XLA.
for strategy in ("auto", "xla"):
  model = create_model(**model_spec(config), conv_strategy=strategy,
                       batch_norm_axis=ts.DATA_AXIS)
  variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(clips[0])))
  tx = create_optimizer(config)
  run = {{"strategy": strategy}}
  for devices in (1, 8):
    mesh = ts.data_mesh(jax.devices()[:devices])
    replicated = jax.NamedSharding(mesh, jax.P())
    batch = jax.NamedSharding(mesh, jax.P(None, ts.DATA_AXIS))
    state = jax.device_put(ts.TrainState(jnp.zeros((), jnp.int32), variables["params"],
        variables["batch_stats"], tx.init(variables["params"])), replicated)
    step = ts.make_train_step(model, tx, lr_schedule(config), jnp.float32, mesh)
    x, y = jax.device_put(clips, batch), jax.device_put(labels, batch)
    assert len(x.sharding.device_set) == devices
    train_hlo = step.lower(state, x, y).compile().as_text()
    forward = ts.make_eval_forward(model, jnp.float32, mesh)
    xe = jax.device_put(clips[0], jax.NamedSharding(mesh, jax.P(ts.DATA_AXIS)))
    eval_hlo = forward.lower(variables, xe).compile().as_text()
    gathered = [m for hlo in (train_hlo, eval_hlo)
                for m in re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather", hlo)]
    new, metrics = step(state, x, y)
    run[devices] = dict(
        leaves=[np.asarray(a) for a in jax.tree.leaves((new.params, new.batch_stats))],
        loss=float(metrics["loss"]), accuracy=float(metrics["accuracy"]),
        logits=np.asarray(forward(variables, xe)),
        custom_calls=train_hlo.count("custom_call_target=\"kpsem_"),
        big_gathers=[g for g in gathered if g.count(",") >= 3])
  one, eight = run[1], run[8]
  results.append(dict(
      strategy=strategy, losses=[one["loss"], eight["loss"]],
      accuracies=[one["accuracy"], eight["accuracy"]],
      worst=max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-6))
                for a, b in zip(one["leaves"], eight["leaves"])),
      logits=float(np.abs(one["logits"] - eight["logits"]).max()),
      custom_calls=[one["custom_calls"], eight["custom_calls"]],
      big_gathers=eight["big_gathers"]))
try:
  config.batch_size = 12
  trainer.Trainer(config, {workdir!r})
  error = None
except trainer.TrainingError as e:
  error = str(e)
print(json.dumps({{"results": results, "error": error}}))
"""


@pytest.mark.slow
def test_sharded_step_over_8_devices_computes_shards_and_equals_one_device(tmp_path,
                                                                          straight_run):
  """``shard_map``: no all-gather of activations, the same step as on one device."""
  config, _, _, _ = straight_run  # its tiny dataset is already prepared
  script = SHARDED_SCRIPT.format(data_dir=config.dataset.data_dir, workdir=str(tmp_path))
  result = fake_devices.run_script(script, devices=8, timeout=900)
  kernels = cpu_kernels.available()
  for run in result["results"]:
    name = run["strategy"]
    # Each device computes its shard: no rank >= 4 array (an activation) is gathered.
    assert run["big_gathers"] == [], name
    # ``auto`` keeps the oneDNN (and argmax) custom calls on 8 devices.
    uses_kernels = kernels and run["strategy"] == "auto"
    assert (run["custom_calls"][0] > 0) == uses_kernels, name
    assert run["custom_calls"][1] == run["custom_calls"][0], name
    # Per leaf, max |1 device - 8 devices| / max |value| after one step: float32 sums in a
    # different order (later steps can drift further where KPSEM's argmax flips).
    assert run["worst"] < 1e-3, name
    assert abs(run["losses"][0] - run["losses"][1]) < 1e-4 * run["losses"][0], name
    assert run["accuracies"][0] == run["accuracies"][1], name
    assert run["logits"] < 1e-4, name
  assert "micro-batch (batch_size / grad_accum_steps) is 12, which does not divide over " \
         "the 8 devices" in result["error"]


@pytest.mark.slow
def test_gradient_accumulation_averages_the_micro_batch_gradients(straight_run):
  import jax.numpy as jnp
  import optax
  config, _, _, _ = straight_run
  model = create_model(**model_spec(config), batch_norm_axis=ts.DATA_AXIS)
  # Seed 2: with seed 1, micro-batch 1 sat on a kink of this tiny model's loss (a ReLU,
  # max-pool or KPSEM argmax decision at a near tie): 1e-6 of noise on its input moved the
  # gradient by 0.19 with either BatchNorm path, so rounding alone decided the comparison.
  # The check below keeps this test's premise: both micro-batches are away from any kink.
  rng = np.random.default_rng(2)
  clips = jnp.asarray(rng.integers(0, 255, (2, 4, 8, 24, 24, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 8, (2, 4)), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), clips[0])
  tx = optax.sgd(0.1)  # plain SGD: the update is -0.1 x the averaged gradient
  state = ts.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                             variables["batch_stats"], tx.init(variables["params"]))
  schedule = lambda step: 0.1
  step = ts.make_train_step(model, tx, schedule, jnp.float32,
                                 ts.data_mesh(jax.devices()[:1]))
  new, _ = step(jax.tree.map(jnp.copy, state), clips, labels)  # the state is donated

  # Clips and parameters are arguments, not constants closed over: XLA folds constants into
  # other code, which changes the rounding.
  reference = create_model(**model_spec(config))  # outside shard_map

  @jax.jit
  def grads(params, clip, label, batch_stats, noise=0.0):
    def loss(p):
      logits, upd = reference.apply({"params": p, "batch_stats": batch_stats},
                                    normalize(clip) + noise, train=True,
                                    mutable=["batch_stats"])
      return ts.cross_entropy(logits, label), upd["batch_stats"]
    return jax.grad(loss, has_aux=True)(params)

  g0, stats0 = grads(variables["params"], clips[0], labels[0], variables["batch_stats"])
  # BatchNorm statistics carry from micro-batch to micro-batch
  g1, stats1 = grads(variables["params"], clips[1], labels[1], stats0)
  for i, g in enumerate((g0, g1)):  # the premise: no kink within rounding of these inputs
    noise = 1e-6 * jax.random.normal(jax.random.PRNGKey(7), clips.shape[1:])
    nudged, _ = grads(variables["params"], clips[i], labels[i], variables["batch_stats"], noise)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(nudged)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4,
                                 err_msg=f"micro-batch {i} is at a kink: choose other data")
  expected = jax.tree.map(lambda p, a, b: p - 0.1 * (a + b) / 2, variables["params"], g0, g1)
  # float32 sums in a different order (scan vs separate calls): agreement to ~1e-4
  for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(new.params)):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
  for want, got in zip(jax.tree.leaves(stats1), jax.tree.leaves(new.batch_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_init_from_a_converted_pytorch_checkpoint(straight_run, tmp_path):
  torch = pytest.importorskip("torch")
  from kpsem_jax import convert
  from kpsem_jax.inference import porting
  from kpsem_jax.testing.torch_mfnet import MFNET_3D, randomize
  config, _, _, _ = straight_run
  kwargs = config.model.backbone_kwargs.to_dict()
  net = randomize(MFNET_3D(num_classes=400, **kwargs), seed=3)
  torch.save(net.state_dict(), str(tmp_path / "k400.pth"))
  convert.run(str(tmp_path / "k400.pth"), str(tmp_path / "init"), num_classes=8,
              model="mf_kpsem", frames=8, log=lambda *a: None)
  config = config.copy_and_resolve_references()
  config.init_from = str(tmp_path / "init")
  t = trainer.Trainer(config, str(tmp_path / "w"))
  state, _, pretrained = t.initial_state()
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  flat = traverse_util.flatten_dict(jax.device_get(state.params))
  flags = traverse_util.flatten_dict(pretrained)
  for key, (collection, path) in porting.expected_torch_keys(
      {"params": state.params, "batch_stats": state.batch_stats}).items():
    if key.startswith("classifier"):
      continue  # 8 classes here: initialised fresh
    if collection == "params":
      np.testing.assert_array_equal(porting.flax_to_torch_array(path, flat[path]), sd[key])
      assert flags[path] is True
  # the tiny config's KPSEM differs in shape from the converted one: initialised fresh
  assert not any(v for p, v in flags.items() if p[0] in ("kpsem", "classifier"))


def _corrupt(step_dir):
  """Flips bytes in every data file of a checkpoint step's variables."""
  import glob  # pylint: disable=import-outside-toplevel
  files = [p for p in glob.glob(os.path.join(step_dir, "variables", "**", "*"), recursive=True)
           if os.path.isfile(p) and "/d/" in p]
  assert files, step_dir
  for path in files:
    data = bytearray(open(path, "rb").read())
    i = len(data) // 2
    data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
    open(path, "wb").write(bytes(data))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_skipped_moved_aside_and_trained_again(
    straight_run, tmp_path, capsys):
  import shutil  # pylint: disable=import-outside-toplevel
  config, straight_dir, _, _ = straight_run
  workdir = tmp_path / "copy"
  shutil.copytree(straight_dir, workdir)
  _corrupt(str(workdir / "checkpoints" / "12"))
  _corrupt(str(workdir / "best" / "12"))
  capsys.readouterr()
  trainer.train_and_evaluate(config, str(workdir))  # the same command again
  out = capsys.readouterr().out
  assert "skipping checkpoint step 12: " in out and "resuming from step 9" in out
  moved = sorted(os.listdir(workdir / "damaged"))  # kept, not deleted: best/ too
  assert [m.rsplit("_", 1)[0] for m in moved] == ["best_12", "checkpoint_12"], moved
  straight, _ = checkpoint.load_variables(straight_dir)
  again, meta = checkpoint.load_variables(str(workdir))
  assert meta["step"] == 12
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(again)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert [s for s, _ in read_metrics(str(workdir))] == list(range(1, 13))


def test_resuming_with_another_model_is_one_clear_error(straight_run, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  config, straight_dir, _, _ = straight_run
  workdir = tmp_path / "copy"
  shutil.copytree(straight_dir, workdir)
  config = config.copy_and_resolve_references()
  config.model.kpsem.embed_dim = 6
  with pytest.raises(trainer.TrainingError) as error:
    trainer.train_and_evaluate(config, str(workdir))
  assert str(error.value) == (
      f"{workdir / 'checkpoints' / '12'} was written for another model (model.kpsem.embed_dim: "
      f"checkpoint 8, config 6): use a new --workdir, or the config the run was trained with "
      f"({workdir / 'config.json'})")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "6", "9"]  # nothing moved


def test_clip_grad_norm_scales_the_whole_gradient_down_to_the_norm():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  config = load_config("synthetic")
  config.optimizer.update(dict(lr=1.0, momentum=0.0, weight_decay=0.0, warmup_steps=0,
                               decay_steps=(), clip_grad_norm=0.5))
  params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
  grads = {"a": jnp.array([3.0, 0.0, 0.0]), "b": jnp.array([0.0, 4.0, 0.0, 0.0])}  # norm 5
  tx = create_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-0.3, 0, 0], rtol=1e-6)  # -lr * g * 0.5 / 5
  np.testing.assert_allclose(updates["b"], [0, -0.4, 0, 0], rtol=1e-6)
  config.optimizer.clip_grad_norm = 0.0  # off: the plain SGD step
  tx = create_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["b"], [0, -4.0, 0, 0], rtol=1e-6)


def test_the_kpsem_branch_clip_and_the_split_mlp_lr_touch_only_their_parameters():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  config = load_config("synthetic")
  config.optimizer.update(dict(lr=1.0, momentum=0.0, weight_decay=0.0, warmup_steps=0,
                               decay_steps=(), clip_grad_norm=0.0, kpsem_clip_grad_norm=1.0,
                               split_mlp_lr_mult=0.1, split_mlp_adam_lr=0.0))
  params = {"backbone": {"w": jnp.zeros(2)},
            "kpsem": {"mlp_w2": jnp.zeros(2), "embed_w": jnp.zeros(2)}}
  grads = {"backbone": {"w": jnp.array([30.0, 40.0])},  # norm 50: not the branch's, kept
           "kpsem": {"mlp_w2": jnp.array([3.0, 0.0]), "embed_w": jnp.array([0.0, 4.0])}}
  tx = create_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["w"], [-30.0, -40.0], rtol=1e-6)
  # the branch's norm 5 scaled to 1; the split MLP then at 0.1x the lr
  np.testing.assert_allclose(updates["kpsem"]["embed_w"], [0.0, -0.8], rtol=1e-6)
  np.testing.assert_allclose(updates["kpsem"]["mlp_w2"], [-0.06, 0.0], rtol=1e-6)
  config.optimizer.update(dict(kpsem_clip_grad_norm=0.0, split_mlp_lr_mult=1.0))
  tx = create_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["kpsem"]["mlp_w2"], [-3.0, 0.0], rtol=1e-6)
  # Adam for the split MLPs: a first step of about -adam_lr * sign(g), whatever the size of
  # the gradient or of the main lr; the other parameters keep the main SGD
  config.optimizer.update(dict(split_mlp_adam_lr=0.003, lr=0.5))
  tx = create_optimizer(config)
  for scale in (1.0, 1000.0):
    scaled = jax.tree.map(lambda g, s=scale: g * s, grads)
    updates, _ = tx.update(scaled, tx.init(params), params)
    np.testing.assert_allclose(updates["kpsem"]["mlp_w2"], [-0.003, 0.0], rtol=1e-4)
    np.testing.assert_allclose(updates["kpsem"]["embed_w"], [0.0, -2.0 * scale], rtol=1e-6)
  # Loaded from a checkpoint (init_from): a split MLP keeps Adam, at pretrained_lr_mult of it,
  # and the other loaded leaves their SGD at pretrained_lr_mult.
  config.optimizer.pretrained_lr_mult = 0.2
  loaded = {"backbone": {"w": True}, "kpsem": {"mlp_w2": True, "embed_w": False}}
  tx = create_optimizer(config, loaded)
  for scale in (1.0, 1000.0):
    scaled = jax.tree.map(lambda g, s=scale: g * s, grads)
    updates, _ = tx.update(scaled, tx.init(params), params)
    np.testing.assert_allclose(updates["kpsem"]["mlp_w2"], [-0.0006, 0.0], rtol=1e-4)
    np.testing.assert_allclose(updates["backbone"]["w"], [-3.0 * scale, -4.0 * scale], rtol=1e-5)
    np.testing.assert_allclose(updates["kpsem"]["embed_w"], [0.0, -2.0 * scale], rtol=1e-6)


class _Compiled:
  """A compiled step's stand-in: its memory analysis reports ``need`` bytes."""

  def __init__(self, need):
    self.need = need

  def memory_analysis(self):
    return type("Stats", (), dict(argument_size_in_bytes=self.need, output_size_in_bytes=0,
                                  alias_size_in_bytes=0, temp_size_in_bytes=0))()


def test_largest_fitting_picks_the_largest_size_under_the_budget_from_few_compiles():
  from kpsem_jax.train import memory_fit
  compiled = []

  def compile_at(size, fixed=100, per_item=10, bump=0):
    compiled.append(size)
    return _Compiled(fixed + per_item * size + (bump if size == 12 else 0))

  sizes = [1, 2, 4, 8, 12, 16, 32]
  assert memory_fit.largest_fitting(compile_at, sizes, 10 ** 6)[0] == 32 and compiled == [32]
  compiled.clear()  # a straight line: the pick is right the first time (32, 1, then 12)
  size, step, need = memory_fit.largest_fitting(compile_at, sizes, 230)
  assert (size, need, compiled) == (12, 220, [32, 1, 12]) and step.need == 220
  compiled.clear()  # the line was optimistic at 12: the next smaller size is compiled
  size, _, _ = memory_fit.largest_fitting(lambda s: compile_at(s, bump=50), sizes, 230)
  assert (size, compiled) == (8, [32, 1, 12, 8])
  with pytest.raises(memory_fit.DoesNotFit, match="even 1 needs"):
    memory_fit.largest_fitting(compile_at, sizes, 105)
  assert memory_fit.budget_bytes(0.5) == 2 ** 29 and memory_fit.budget_bytes(0) > 0


def test_a_step_over_the_memory_budget_is_split_into_micro_batches(tmp_path):
  from kpsem_jax.train import memory_fit
  from kpsem_jax.train.train_step import make_train_step
  config = tiny_config(tmp_path / "tfds", steps=2)
  config.dataset.auto_prepare = True
  t = trainer.Trainer(config, str(tmp_path / "probe"))
  state, tx, _ = t.initial_state()
  step_fn = make_train_step(t.model, tx, t.schedule, t.dtype, t.mesh)
  need = {m: memory_fit.need_bytes(t.compile_train_step(step_fn, state, m)) for m in (8, 4)}
  assert need[8] > need[4] > 0  # XLA's analysis grows with the micro-batch
  # A budget between the needs of micro-batches of 4 and 8: the run trains in 2 of 4.
  config.memory_limit_gb = (need[4] + need[8]) / 2 / memory_fit.GIB
  workdir = str(tmp_path / "split")
  final = trainer.train_and_evaluate(config, workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert (saved["grad_accum_steps"], saved["batch_size"]) == (2, 8)
  assert np.isfinite([loss for _, loss in read_metrics(workdir)]).all()
  assert 0 <= final["video_top1"] <= 1


def test_a_step_over_the_memory_budget_is_named_in_one_line_when_asked_or_nothing_fits(
    tmp_path, monkeypatch, straight_run):
  from kpsem_jax.train import memory_fit
  config = straight_run[0].copy_and_resolve_references()
  # Needs of 100 bytes + 10 a clip (the decision, without compiling).
  monkeypatch.setattr(trainer.Trainer, "compile_train_step",
                      lambda self, step_fn, state, micro: _Compiled(100 + 10 * micro))
  config.update(dict(memory_fit="stop", memory_limit_gb=165 / memory_fit.GIB))
  with pytest.raises(trainer.TrainingError, match=r"largest that fits .* is 4: "
                     r"--config.grad_accum_steps=2 \(micro-batches of 4\)") as error:
    trainer.train_and_evaluate(config, str(tmp_path / "stop"))
  assert "\n" not in str(error.value)
  assert not os.path.exists(os.path.join(tmp_path, "stop", "checkpoints"))
  config.update(dict(memory_fit="split", memory_limit_gb=105 / memory_fit.GIB))
  with pytest.raises(trainer.TrainingError, match="does not fit in memory: even 1 needs"):
    trainer.train_and_evaluate(config, str(tmp_path / "none"))
  config.memory_fit = "sometimes"
  with pytest.raises(trainer.TrainingError, match="config.memory_fit='sometimes': choose one"):
    trainer.check_config(config)


def test_evaluating_a_workdir_that_cannot_be_written_fails_before_evaluating(
    straight_run, monkeypatch, capsys):
  import errno  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  config, workdir, _, _ = straight_run

  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir", ""))
  monkeypatch.setattr(tempfile, "mkstemp", read_only)
  evaluated = []
  monkeypatch.setattr(trainer.Trainer, "evaluate", lambda *a, **k: evaluated.append(1))
  with pytest.raises(SystemExit) as stop:
    with cli.one_line_errors(trainer.TrainingError, doing=f"evaluating in {workdir}"):
      workdir_eval.evaluate_workdir(config.copy_and_resolve_references(), workdir)
  assert stop.value.code == 1 and not evaluated
  assert capsys.readouterr().err.strip() == (
      f"error: evaluating in {workdir}: {os.path.abspath(workdir)}: Read-only file system; "
      "the file system is read-only: choose a writable place")


def test_evaluating_with_the_config_of_another_model_names_the_differences(straight_run):
  config, workdir, _, _ = straight_run
  other = config.copy_and_resolve_references()
  other.model.kpsem_at = "conv2"
  other.model.kpsem.num_regions = 2
  with pytest.raises(trainer.TrainingError) as error:
    workdir_eval.evaluate_workdir(other, workdir)
  assert str(error.value) == (
      f"{workdir} holds a checkpoint of another model (model.kpsem.num_regions: checkpoint 4, "
      "config 2; model.kpsem_at: checkpoint conv3, config conv2): evaluate it with the config "
      f"it was trained with ({os.path.join(workdir, 'config.json')})")


def test_a_full_disk_when_a_run_resumes_is_one_line(straight_run, tmp_path, monkeypatch,
                                                     capsys):
  import errno  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  from kpsem_jax import atomic  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  config, workdir, _, _ = straight_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("lock"))

  def full(path, text):
    raise OSError(errno.ENOSPC, "No space left on device", path)
  monkeypatch.setattr(atomic, "write_text", full)  # metrics.jsonl is rewritten on resume
  with pytest.raises(SystemExit) as stop:
    with cli.one_line_errors(trainer.TrainingError, doing=f"training in {copy}"):
      trainer.train_and_evaluate(config.copy_and_resolve_references(), copy)
  assert stop.value.code == 1
  assert capsys.readouterr().err.strip().endswith(
      f"error: training in {copy}: {os.path.join(copy, 'metrics.jsonl')}: No space left on "
      "device; free space there, then rerun the same command")
