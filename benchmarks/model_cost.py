"""Parameters, FLOPs and forward time of MFNet-3D vs MF-KPSEM at 16x224x224.

    python benchmarks/model_cost.py [--batch=1] [--repeats=5] [--num_classes=400]

FLOPs come from XLA's cost analysis of the jitted inference forward with XLA's own
convolutions and ``jnp.argmax`` (``conv_strategy="xla"``: XLA cannot see into the oneDNN
and argmax custom calls that ``auto`` uses on CPUs). XLA counts a multiply-add as
2 FLOPs; the paper's "FLOPs", like most video papers', are multiply-adds, so both are
printed. Timings are medians of interleaved runs of the two jitted forwards
(default ``auto`` strategy) on the same input, measured in one process, and of the KPSEM
branch alone on MF-KPSEM's conv4 map: the overhead without the noise of two whole forwards.
"""

import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from kpsem_jax.models.classifier import VideoClassifier, create_model

FLAGS = flags.DEFINE_integer("batch", 1, "clips per forward")
flags.DEFINE_integer("repeats", 5, "timed runs per model (after one warm-up)")
flags.DEFINE_integer("num_classes", 400, "classifier size (Table 1 counts 400 classes)")
flags.DEFINE_integer("frames", 16, "frames per clip")
flags.DEFINE_integer("size", 224, "frame height and width")

PAPER = {"MFNet": (8.0e6, 11.1e9), "MF-KPSEM": (8.11e6, 11.21e9)}


def build(kpsem, shape):
  model = create_model("mfnet3d", flags.FLAGS.num_classes, kpsem=kpsem)
  x = jnp.zeros(shape, jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  compiled = jax.jit(model.apply).lower(variables, x).compile()
  # Every convolution as one XLA convolution, AReSE's argmax as jnp.argmax.
  counted = create_model("mfnet3d", flags.FLAGS.num_classes, kpsem=kpsem, conv_strategy="xla")
  cost = jax.jit(counted.apply).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = sum(p.size for p in jax.tree.leaves(variables["params"]))
  kpsem_params = sum(p.size for p in jax.tree.leaves(variables["params"].get("kpsem", {})))
  return compiled, variables, x, params, kpsem_params, float(cost["flops"]), model


def kpsem_branch(model, variables, x):
  """The compiled KPSEM branch and its input, MF-KPSEM's conv4 map for ``x``."""
  stages = jax.jit(lambda v, x: model.apply(v, x, method=VideoClassifier.stages))(variables, x)
  branch = lambda v, f: model.apply(v, f, method=lambda m, f: m.kpsem(f))  # noqa: E731
  return jax.jit(branch).lower(variables, stages["conv4"]).compile(), stages["conv4"]


def main(_):
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  f = flags.FLAGS
  shape = (f.batch, f.frames, f.size, f.size, 3)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, input {shape}")
  models = {"MFNet": build(None, shape), "MF-KPSEM": build({}, shape)}
  _, v_ours, x_ours, *_, model_ours = models["MF-KPSEM"]
  runs = {name: m[:3] for name, m in models.items()}
  branch, conv4_map = kpsem_branch(model_ours, v_ours, x_ours)
  runs["KPSEM branch"] = (branch, v_ours, conv4_map)
  times = {name: [] for name in runs}
  for name, (fn, v, x) in runs.items():  # warm-up
    jax.block_until_ready(fn(v, x))
  for _ in range(f.repeats):
    for name, (fn, v, x) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(v, x))
      times[name].append(time.perf_counter() - start)
  print(f"{'model':10s} {'params':>10s} {'(paper)':>8s} {'GFLOPs':>8s} {'GMACs':>7s} "
        f"{'(paper)':>8s} {'forward s':>10s}")
  for name, (_, _, _, params, _, flops, _) in models.items():
    p_params, p_flops = PAPER[name]
    print(f"{name:10s} {params:10,d} {p_params / 1e6:7.2f}M {flops / 1e9 / f.batch:8.2f} "
          f"{flops / 2e9 / f.batch:7.2f} {p_flops / 1e9:7.2f}G "
          f"{statistics.median(times[name]):10.3f}")
  base, ours = models["MFNet"], models["MF-KPSEM"]
  t_base, t_ours = statistics.median(times["MFNet"]), statistics.median(times["MF-KPSEM"])
  print(f"KPSEM branch parameters (classifier excluded): {ours[4]:,d}")
  print(f"ratios MF-KPSEM / MFNet: params {ours[3] / base[3]:.4f} (paper 1.0138), "
        f"FLOPs {ours[5] / base[5]:.4f} (paper 1.01, target <= 1.02), "
        f"forward time {t_ours / t_base:.4f} (target <= 1.03)")
  t_branch = statistics.median(times["KPSEM branch"])
  print(f"KPSEM branch alone on the conv4 map: {t_branch * 1e3:.1f} ms, "
        f"{t_branch / t_base:.4f} of MFNet's forward time (target <= 0.03)")


if __name__ == "__main__":
  app.run(main)
