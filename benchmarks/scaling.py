"""Data-parallel scaling of the real train step on N forced CPU devices: what each computes.

    python benchmarks/scaling.py [--config=configs/synthetic.py] [--per_device_batch=2]
                                 [--devices=1,2,4,8] [--strategies=xla,auto]

Compiles ``train_step.make_train_step`` (the function ``train.py`` runs) for a global batch of
``per_device_batch * N`` on the first N of 8 forced host devices, and prints per N and
convolution strategy:
- FLOPs per device: XLA's cost analysis of the compiled per-device program, and its ratio
  to N=1 (target: within 5%). XLA cannot see into custom calls, so under ``auto`` with
  oneDNN the count leaves out the oneDNN convolutions and AReSE's argmax kernel.
- batch collectives: collectives whose operand shapes change when the per-device batch
  does (the step is compiled a second time with one clip more per device and the two
  programs' collectives compared): an all-gather of activations shows up here (target 0).
- collective bytes: the bytes of every collective's result per step, beside the gradient
  bytes (float32 parameters) and the BatchNorm statistics (means and means of squares of
  every BatchNorm per micro-batch, forward and backward) that the step must exchange.
Beside them, rows ``jit xla``: the same step (one micro-batch) under plain ``jax.jit`` with
a batch-sharded input, as the trainer did before ``shard_map``, left to XLA's SPMD
partitioner, which gathers the batch for every grouped convolution (openxla/xla#47945).
"""

import os
import re

from absl import app, flags, logging
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "synthetic.py"),
                                "a configs/*.py file (its model, clip size, micro-batches)")
flags.DEFINE_integer("per_device_batch", 2, "clips per device per micro-batch")
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "device counts N")
flags.DEFINE_list("strategies", ["xla", "auto"], "convolution strategies")
flags.DEFINE_bool("baseline", True, "also compile the plain-jax.jit step (rows 'jit xla')")

COLLECTIVE = re.compile(r"= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(?:-start)?\(")
ARRAY = re.compile(r"(pred|[a-z]+\d+)\[([\d,]*)\]")
BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4,
         "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def collectives(hlo: str):
  """``[(kind, ((dtype, shape), ...)), ...]`` of every collective in an HLO module's text."""
  found = []
  for line in hlo.splitlines():
    m = COLLECTIVE.search(line)
    if m and not m.group(2).endswith("-done"):
      arrays = tuple((d, tuple(int(n) for n in s.split(",") if n))
                     for d, s in ARRAY.findall(m.group(1)))
      found.append((m.group(2), arrays))
  return found


def nbytes(arrays) -> int:
  total = 0
  for dtype, shape in arrays:
    size = 1
    for n in shape:
      size *= n
    total += size * BYTES.get(dtype, 4)
  return total


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  counts = [int(n) for n in FLAGS.devices]
  # Entry point: JAX options before JAX starts its CPU backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={max(counts)}").strip()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models import cpu_kernels  # pylint: disable=import-outside-toplevel
  from kpsem_jax import jax_options
  jax_options.configure()
  from kpsem_jax.config_base import model_spec  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import train_step as ts  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import create_model, normalize  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train.optimizer import create_optimizer, lr_schedule  # pylint: disable=import-outside-toplevel

  config = FLAGS.config
  c = config.clip
  accum = int(config.grad_accum_steps)
  spec = model_spec(config)
  print(f"JAX {jax.__version__}, {jax.device_count()} forced CPU devices; "
        f"{config.dataset.name} config: "
        f"{spec['backbone']}{' + KPSEM' if spec['kpsem'] else ''}, clips {c.frames}x{c.crop}x"
        f"{c.crop}, {FLAGS.per_device_batch} per device x {accum} micro-batch(es); "
        f"CPU kernels: {'built' if cpu_kernels.available() else cpu_kernels.unavailable_reason()}")

  def plain_jit_step(model, tx, mesh):
    """One micro-batch, differentiated and updated under plain jax.jit (the baseline)."""
    def step(state, clips, labels):
      def loss_fn(params):
        logits, new = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  normalize(clips[0]), train=True,
                                  mutable=["batch_stats"])
        return ts.cross_entropy(logits, labels[0]), new["batch_stats"]
      (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return ts.TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                           batch_stats, opt_state)
    batch = jax.NamedSharding(mesh, jax.P(None, ts.DATA_AXIS))
    replicated = jax.NamedSharding(mesh, jax.P())
    return jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=replicated)

  def compile_step(model, tx, variables, devices, per_device, baseline=False):
    mesh = ts.data_mesh(jax.devices()[:devices])
    state = jax.device_put(
        ts.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                           variables["batch_stats"], tx.init(variables["params"])),
        jax.NamedSharding(mesh, jax.P()))
    batch = jax.NamedSharding(mesh, jax.P(None, ts.DATA_AXIS))
    shape = (1 if baseline else accum, per_device * devices)
    clips = jax.device_put(np.zeros(shape + (c.frames, c.crop, c.crop, 3), np.uint8), batch)
    labels = jax.device_put(np.zeros(shape, np.int32), batch)
    if baseline:
      step = plain_jit_step(model, tx, mesh)
    else:
      step = ts.make_train_step(model, tx, lr_schedule(config), jnp.float32, mesh)
    return step.lower(state, clips, labels).compile()

  header = (f"{'strategy':9s} {'N':>2s} {'global batch':>12s} {'GFLOP/device':>12s} "
            f"{'vs N=1':>7s} {'batch colls':>11s} {'collectives':>11s} {'coll. MB':>9s} "
            f"{'grads+BN MB':>11s} {'ratio':>6s}")
  runs = [(s, False) for s in FLAGS.strategies] + ([("xla", True)] if FLAGS.baseline else [])
  for conv_strategy, baseline in runs:
    model = create_model(**spec, conv_strategy=conv_strategy,
                                 batch_norm_axis=None if baseline else ts.DATA_AXIS)
    variables = jax.device_get(jax.jit(model.init)(
        jax.random.PRNGKey(0), jnp.zeros((1, c.frames, c.crop, c.crop, 3))))
    tx = create_optimizer(config)
    grad_bytes = 4 * sum(p.size for p in jax.tree.leaves(variables["params"]))
    # Each BatchNorm exchanges its means and means of squares (2 x C float32) per
    # micro-batch, and their cotangents in the backward pass.
    bn_bytes = 2 * 2 * 4 * accum * sum(
        s.size for s in jax.tree.leaves(variables["batch_stats"])) // 2
    print("\n" + header)
    base = None
    for n in counts:
      compiled = compile_step(model, tx, variables, n, FLAGS.per_device_batch, baseline)
      bigger = compile_step(model, tx, variables, n, FLAGS.per_device_batch + 1, baseline)
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost["flops"])
      base = flops if base is None else base
      found, other = collectives(compiled.as_text()), collectives(bigger.as_text())
      remaining = list(other)
      batch_colls = 0
      for item in found:
        if item in remaining:
          remaining.remove(item)
        else:
          batch_colls += 1
      moved = sum(nbytes(arrays) for _, arrays in found)
      needed = grad_bytes + bn_bytes
      name = f"jit {conv_strategy}" if baseline else conv_strategy
      print(f"{name:9s} {n:2d} {FLAGS.per_device_batch * n * (1 if baseline else accum):12d} "
            f"{flops / 1e9:12.3f} {flops / base:7.3f} {batch_colls:11d} {len(found):11d} "
            f"{moved / 1e6:9.3f} {needed / 1e6:11.3f} "
            f"{(moved / needed if n > 1 else float('nan')):6.2f}")


if __name__ == "__main__":
  app.run(main)
