"""A config's train step: XLA's memory need beside the memory the process really took.

    .venv/bin/python benchmarks/step_memory.py --config=video_folder --arg=small \\
        --micro=8 [--micro=4] [--run] [--classes=10]

For each ``--micro`` (clips per micro-batch, one device), compiles the config's train step
(random inputs, no data) and prints XLA's need (``kpsem_jax.train.memory_fit.need_bytes``: the
check a run makes before its first step) and the budget the run would compare it with.
``--run`` then runs 3 steps at the first ``--micro`` and prints the seconds per step and the
process's peak resident memory growth beside the need (the ratio says how far the check's
figure is from what the kernel sees).
"""

import resource
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from kpsem_jax import jax_options
from kpsem_jax.config_base import load_config, model_spec
from kpsem_jax.models.classifier import create_model
from kpsem_jax.train import memory_fit
from kpsem_jax.train.optimizer import create_optimizer, lr_schedule
from kpsem_jax.train.train_step import DATA_AXIS, TrainState, data_mesh, make_train_step

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "video_folder", "a file of configs/, without .py")
flags.DEFINE_string("arg", "", "its get_config argument (e.g. small)")
flags.DEFINE_multi_integer("micro", [8], "clips per micro-batch")
flags.DEFINE_integer("classes", 10, "classifier width")
flags.DEFINE_bool("run", False, "also run 3 steps at the first --micro and measure")


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(_):
  jax_options.configure()
  config = load_config(FLAGS.config, FLAGS.arg)
  config.dataset.num_classes = FLAGS.classes
  config.init_from = ""
  model = create_model(**model_spec(config), batch_norm_axis=DATA_AXIS)
  c = config.clip
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, c.frames, c.crop,
                                                                     c.crop, 3)))
  schedule = lr_schedule(config)
  tx = create_optimizer(config, None, schedule)
  state = TrainState(jnp.zeros((), jnp.int32), variables["params"],
                     variables.get("batch_stats", {}), tx.init(variables["params"]))
  step = make_train_step(model, tx, schedule, jnp.float32, data_mesh(jax.devices()[:1]))
  print(f"{FLAGS.config}:{FLAGS.arg or 'default'}, clips {c.frames}x{c.crop}x{c.crop}; "
        f"a device's budget here: {memory_fit.describe(memory_fit.budget_bytes())} "
        f"({memory_fit.HEADROOM:.0%} of {memory_fit.describe(memory_fit.available_bytes())} "
        "available)")
  compiled = {}
  for micro in FLAGS.micro:
    start = time.perf_counter()
    shapes = (jax.ShapeDtypeStruct((1, micro, c.frames, c.crop, c.crop, 3), jnp.uint8),
              jax.ShapeDtypeStruct((1, micro), jnp.int32))
    compiled[micro] = step.lower(state, *shapes).compile()
    print(f"  micro-batch {micro:3d}: XLA need {memory_fit.describe(memory_fit.need_bytes(compiled[micro]))}"
          f" (compiled in {time.perf_counter() - start:.0f} s)")
  if FLAGS.run:
    micro = FLAGS.micro[0]
    rng = np.random.default_rng(0)
    clips = jnp.asarray(rng.integers(0, 255, (1, micro, c.frames, c.crop, c.crop, 3), np.uint8))
    labels = jnp.asarray(rng.integers(0, FLAGS.classes, (1, micro)), jnp.int32)
    before = peak_rss_bytes()
    times = []
    for _ in range(3):
      start = time.perf_counter()
      state, metrics = compiled[micro](state, clips, labels)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
    grown = peak_rss_bytes() - before
    need = memory_fit.need_bytes(compiled[micro])
    print(f"  ran micro-batch {micro}: {np.median(times):.2f} s a step (median of 3), peak "
          f"resident memory grew {memory_fit.describe(grown)}; need / growth = "
          f"{need / max(grown, 1):.2f}; peak resident {memory_fit.describe(peak_rss_bytes())}")


if __name__ == "__main__":
  app.run(main)
