"""A two-minute tour on generated clips, no download: ``python -m kpsem_jax.demo``.

1. AReSE reads the motion of a bright blob moving in each of 8 directions (K = 1 and 4).
2. The paper's MF-KPSEM at 16x224x224: stage shapes and parameter counts (no compute).
3. A narrow MF-KPSEM takes jitted SGD steps on a fixed batch of moving-blob clips, and its
   loss falls.
"""

import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kpsem_jax.models import arese
from kpsem_jax.models.classifier import create_model

FLAGS = flags.FLAGS

DIRECTIONS = {"right": (1, 0), "down-right": (1, 1), "down": (0, 1), "down-left": (-1, 1),
              "left": (-1, 0), "up-left": (-1, -1), "up": (0, -1), "up-right": (1, -1)}


def moving_blob(direction, frames=8, size=16, start=None):
  """``(frames, size, size, 1)``: a disk of radius 2 moving one pixel per frame."""
  dx, dy = direction
  x0, y0 = start if start is not None else (size // 2 - dx * frames // 2,
                                              size // 2 - dy * frames // 2)
  yy, xx = np.mgrid[0:size, 0:size]
  clip = [np.maximum(0.0, 2.0 - np.hypot(xx - x0 - dx * t, yy - y0 - dy * t))
          for t in range(frames)]
  return np.stack(clip)[..., None].astype(np.float32)


def part1():
  print("1. AReSE on a blob moving one pixel per frame on a 16x16 map "
        "(expected shift 2/16 = 0.125 per axis)")
  run = jax.jit(arese.arese)
  for name, d in DIRECTIONS.items():
    k1 = run(jnp.asarray(moving_blob(d)), jnp.zeros((8, 2, 0))).rkps.mean(axis=(0, 1))
    # K = 4: 4 frames inside the top-left region (a blob straddling a split line is half
    # matched to background by Eq. 9).
    start = tuple(2 + 3 * (c < 0) + (c == 0) for c in d)
    k4 = run(jnp.asarray(moving_blob(d, frames=4, start=start)),
             jnp.zeros((4, 2, 1))).rkps.mean(axis=(0, 1))
    print(f"   {name:10s} K=1 shift ({k1[0]:+.3f}, {k1[1]:+.3f})   "
          f"K=4 direction ({k4[0] / np.linalg.norm(k4):+.2f}, {k4[1] / np.linalg.norm(k4):+.2f})")


def part2():
  print("2. The paper's models at 16x224x224 (abstract evaluation, no compute)")
  x = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32)
  for name, kpsem in (("MFNet-3D", None), ("MF-KPSEM", {})):
    model = create_model("mfnet3d", 400, kpsem=kpsem)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    v_out = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.features), variables, x)
    params = sum(p.size for p in jax.tree.leaves(variables["params"]))
    print(f"   {name:9s} {params:10,d} parameters, classifier input {v_out.shape[-1]}")


def part3(steps):
  print(f"3. A narrow MF-KPSEM learning 4 motion directions ({steps} SGD steps, 8x32x32 clips)")
  model = create_model(
      "mfnet3d", 4,
      backbone_kwargs=dict(conv1_channels=8, stage_channels=(16, 16, 32, 32),
                           stage_depths=(1, 1, 1, 1), groups=4),
      kpsem=dict(num_sets=2, embed_dim=8, reduction_channels=(8, 4)), kpsem_at="conv3")
  rng = np.random.default_rng(0)
  clips, labels = [], []
  for i in range(16):
    label = i % 4
    d = list(DIRECTIONS.values())[2 * label]
    blob = moving_blob(d, size=32, start=(rng.integers(12, 20), rng.integers(12, 20)))
    noise = 0.2 * rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    clips.append(np.repeat(blob, 3, axis=-1) + noise)
    labels.append(label)
  x, y = jnp.asarray(np.stack(clips)), jnp.asarray(labels)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  tx = optax.sgd(0.05, momentum=0.9)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  @jax.jit
  def step(state, x, y):
    params, batch_stats, opt = state

    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), new["batch_stats"], opt), loss

  start = time.perf_counter()
  for i in range(steps):
    state, loss = step(state, x, y)
    if i % 5 == 0 or i == steps - 1:
      print(f"   step {i:3d}  loss {float(loss):.4f}  ({time.perf_counter() - start:.1f} s)")


def main(_):
  part1()
  part2()
  part3(FLAGS.steps)
  print("Training on real datasets: see docs/training.md (train.py, configs/).")


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_integer("steps", 30, "SGD steps of part 3")


if __name__ == "__main__":
  from kpsem_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)
