"""Input pipeline throughput beside the training step's, and the loader's peak memory.

    python benchmarks/loader_throughput.py [--workers=2] [--batches=10]

Builds (once, under --data_dir) the synthetic_motion dataset and a miniature UCF101 made of
the real fixture videos (../shared/fixtures), then measures train-loader clips/s with 0 and
--workers worker processes: synthetic clips at 16x56x56 (the CPU demo's input) and real
videos at MFNet's 16x224x224. Beside each, the clips/s of one jitted SGD step of the model
that would consume them (narrow MF-KPSEM at 56x56, the paper's MF-KPSEM at 224x224), so one
can see whether the loader keeps up (the paper's model steps on batches of 2 on a CPU). Peak memory is the maximum resident set size of this
process and of the worker processes.
"""

import os
import resource
import shutil
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import optax

from kpsem_jax import input_pipeline as ip
from kpsem_jax import prepare as prepare_lib
from kpsem_jax.models import create_model

flags.DEFINE_string("data_dir", "/tmp/kpsem_bench_data", "where the benchmark datasets go")
flags.DEFINE_integer("workers", 2, "worker processes for the second measurement")
flags.DEFINE_integer("batches", 10, "timed batches per measurement (after 2 warm-up)")
flags.DEFINE_integer("batch_size", 8, "clips per batch")
FLAGS = flags.FLAGS
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
NARROW = dict(backbone_kwargs=dict(conv1_channels=8, stage_channels=(16, 32, 32, 64),
                                   stage_depths=(1, 1, 2, 1), groups=4),
              kpsem=dict(num_sets=4, embed_dim=8, reduction_channels=(16, 16)))


def fixture_ucf101(root):
  """A miniature UCF101 (official lists, every fixture video in the train list)."""
  src = os.path.join(root, "ucf101_src")
  if os.path.isdir(src):
    return src
  lists = os.path.join(src, "ucfTrainTestlist")
  os.makedirs(lists)
  shutil.copy(os.path.join(FIXTURES, "splits", "ucf101_ucfTrainTestlist", "classInd.txt"), lists)
  videos = sorted(f for f in os.listdir(os.path.join(FIXTURES, "videos"))
                  if f.endswith((".avi", ".mp4", ".mkv")))
  os.makedirs(os.path.join(src, "UCF-101", "ApplyEyeMakeup"))
  with open(os.path.join(lists, "trainlist01.txt"), "w") as train:
    for i, name in enumerate(videos):
      target = f"ApplyEyeMakeup/v_ApplyEyeMakeup_g{i + 1:02d}_c01{os.path.splitext(name)[1]}"
      shutil.copy(os.path.join(FIXTURES, "videos", name), os.path.join(src, "UCF-101", target))
      train.write(f"{target} 1\n")
  with open(os.path.join(lists, "testlist01.txt"), "w") as test:
    test.write("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
  return src


def loader_rate(source, spec, workers):
  loader = ip.train_loader(source, FLAGS.batch_size, spec, seed=0, worker_count=workers,
                           process_index=0, process_count=1)
  it = iter(loader)
  for _ in range(2):
    next(it)
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(it)
  return FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)


def step_rate(model_kwargs, spec, num_classes, batch_size):
  model = create_model("mfnet3d", num_classes, **model_kwargs)
  x = jnp.zeros((batch_size, spec.frames, spec.crop, spec.crop, 3))
  y = jnp.zeros((batch_size,), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  tx = optax.sgd(0.01, momentum=0.9)

  @jax.jit
  def step(params, batch_stats, opt):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt

  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  state = jax.block_until_ready(step(*state))
  start = time.perf_counter()
  for _ in range(3):
    state = jax.block_until_ready(step(*state))
  return 3 * batch_size / (time.perf_counter() - start)


def main(_):
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  logging.set_verbosity(logging.WARNING)
  os.makedirs(FLAGS.data_dir, exist_ok=True)
  log = lambda *a: None
  prepare_lib.prepare("synthetic_motion", FLAGS.data_dir, log=log)
  prepare_lib.prepare("ucf101", FLAGS.data_dir, source_dir=fixture_ucf101(FLAGS.data_dir),
                      split=1, log=log)
  cases = [
      ("synthetic_motion 16x56x56", ip.load_source(FLAGS.data_dir, "synthetic_motion", "default",
                                                   "train")[0],
       ip.ClipSpec(frames=16, interval=1, crop=56, train_scale=(56, 72), eval_resize=64),
       NARROW, 8, FLAGS.batch_size),
      ("fixture videos 16x224x224", ip.load_source(FLAGS.data_dir, "ucf101", "split1", "train")[0],
       ip.ClipSpec(), dict(kpsem={}), 101, 2),  # the paper's model: batch 2 on a CPU
  ]
  print(f"batch {FLAGS.batch_size}, {os.cpu_count()} CPU cores, {jax.devices()[0].device_kind}")
  print(f"{'data':28s} {'loader 0 workers':>17s} {f'loader {FLAGS.workers} workers':>17s} "
        f"{'train step':>11s} {'loader/step':>12s}   (clips/s)")
  for name, source, spec, model_kwargs, classes, step_batch in cases:
    rate0 = loader_rate(source, spec, 0)
    rate_n = loader_rate(source, spec, FLAGS.workers)
    step = step_rate(model_kwargs, spec, classes, step_batch)
    print(f"{name:28s} {rate0:17.1f} {rate_n:17.1f} {step:11.3f} {max(rate0, rate_n) / step:12.1f}")
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  print(f"peak resident memory: this process {own:.0f} MiB (model and XLA included), "
        f"largest worker process {children:.0f} MiB")


if __name__ == "__main__":
  app.run(main)
