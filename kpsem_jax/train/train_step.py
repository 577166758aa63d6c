"""The data-parallel train step and eval forward: ``jax.shard_map`` over a 1-D ``data``
mesh, each device computing its own shard; the state they update."""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kpsem_jax.models.classifier import normalize


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


DATA_AXIS = "data"  # the mesh axis the batch is split over


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``DATA_AXIS`` over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def make_train_step(model, tx, schedule, compute_dtype, mesh: jax.sharding.Mesh):
  """The jitted train step ``(state, clips, labels) -> (state, metrics)``, state donated.

  ``clips`` ``(A, b, T, H, W, 3)`` uint8 and ``labels`` ``(A, b)``: ``A`` micro-batches of
  the global batch, each split over ``mesh``'s ``data`` axis. Under ``jax.shard_map`` every
  device runs forward and backward on its own shard only (whatever the convolution
  strategy: XLA's partitioner would gather a sharded batch for a grouped convolution and
  recompute it everywhere); BatchNorm statistics are those of the global micro-batch when
  ``model`` was built with ``batch_norm_axis=DATA_AXIS`` (``lax.pmean`` of the means and
  means of squares). Each device sums its micro-batch gradients, one ``psum`` adds them up
  over devices, and the replicated parameters and optimizer state are updated once, alike
  on every device. Metrics: loss and accuracy of the global batch, the step's lr, and ``params_finite`` (1.0 where every updated
  parameter is finite).
  """
  devices = mesh.shape[DATA_AXIS]

  def local_step(state: TrainState, clips, labels):
    # Gradients with respect to a per-device copy of the parameters: each device keeps
    # its own sum over its micro-batches, added over devices once, after the scan.
    params = jax.lax.pcast(state.params, DATA_AXIS, to="varying")

    def micro_step(carry, batch):
      grads, batch_stats, loss_sum, correct = carry
      x, y = batch
      x = normalize(x).astype(compute_dtype)

      def loss_fn(p):
        logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        # This device's share of the global micro-batch's mean loss.
        return cross_entropy(logits, y) / devices, (new["batch_stats"], logits)

      (loss, (batch_stats, logits)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      grads = jax.tree.map(jnp.add, grads, g)
      correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
      return (grads, batch_stats, loss_sum + loss, correct), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (zeros, state.batch_stats, jax.lax.pcast(jnp.float32(0), DATA_AXIS, to="varying"),
            jax.lax.pcast(jnp.int32(0), DATA_AXIS, to="varying"))
    (grads, batch_stats, loss, correct), _ = jax.lax.scan(micro_step, init, (clips, labels))
    accum = clips.shape[0]
    grads = jax.tree.map(lambda g: g / accum, jax.lax.psum(grads, DATA_AXIS))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    metrics = {"loss": jax.lax.psum(loss, DATA_AXIS) / accum,
               "accuracy": jax.lax.psum(correct, DATA_AXIS) / (labels.size * devices),
               "lr": schedule(state.step),
               # whether every updated parameter is finite (a finite loss can still give
               # a non-finite update: lr=nan); the loop never saves a state without it
               "params_finite": finite.astype(jnp.float32)}
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  batch = jax.P(None, DATA_AXIS)
  step = jax.shard_map(local_step, mesh=mesh, in_specs=(jax.P(), batch, batch),
                       out_specs=(jax.P(), jax.P()))
  return jax.jit(step, donate_argnums=(0,))


def make_eval_forward(model, compute_dtype, mesh: jax.sharding.Mesh):
  """The jitted eval forward ``(variables, clips (B, T, H, W, 3) uint8) -> (B, classes)``.

  Each device computes the float32 logits of its own shard of the batch (``shard_map``
  over the ``data`` axis); the logits come back replicated on every device.
  """
  forward = jax.shard_map(
      lambda v, x: model.apply(v, normalize(x).astype(compute_dtype)).astype(jnp.float32),
      mesh=mesh, in_specs=(jax.P(), jax.P(DATA_AXIS)), out_specs=jax.P(DATA_AXIS))
  return jax.jit(forward, out_shardings=jax.NamedSharding(mesh, jax.P()))


def diverged(metrics) -> Optional[str]:
  """Why a step's state must not be kept (``"the loss became nan"``, ``"a parameter became
  non-finite"``), or None for a finite loss and finite parameters."""
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    return f"the loss became {loss}"
  if float(metrics.get("params_finite", 1.0)) < 1.0:
    return "a parameter became non-finite"
  return None


def compile_train_step(step_fn, state, clip_shape, batch_size: int, micro: int,
                       sharding: jax.NamedSharding):
  """``step_fn`` compiled for a global batch of ``batch_size`` clips of ``clip_shape``
  ``(T, H, W, 3)`` in micro-batches of ``micro``."""
  accum = batch_size // micro
  clips = jax.ShapeDtypeStruct((accum, micro) + tuple(clip_shape), jnp.uint8, sharding=sharding)
  labels = jax.ShapeDtypeStruct((accum, micro), jnp.int32, sharding=sharding)
  return step_fn.lower(state, clips, labels).compile()


def compile_eval_forward(forward, variables, clip_shape, size: int,
                         replicated: jax.NamedSharding, sharding: jax.NamedSharding):
  """``forward`` (:func:`make_eval_forward`) compiled for ``size`` clips of ``clip_shape``."""
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        variables)
  clips = jax.ShapeDtypeStruct((size,) + tuple(clip_shape), jnp.uint8, sharding=sharding)
  return forward.lower(shapes, clips).compile()


def micro_batch(batch_size: int, accum: int, eval_batch_size: int) -> int:
  """The clips of one of ``accum`` micro-batches of a step; a ``ValueError`` names a size that
  does not divide into micro-batches or over the devices."""
  devices = jax.device_count()
  if batch_size % accum:
    raise ValueError(f"batch_size={batch_size} does not divide into grad_accum_steps={accum} "
                     "micro-batches")
  micro = batch_size // accum
  for name, size in (("micro-batch (batch_size / grad_accum_steps)", micro),
                     ("eval_batch_size", eval_batch_size)):
    if size % devices:
      raise ValueError(f"the {name} is {size}, which does not divide over the {devices} "
                       f"devices; use a multiple of {devices}")
  return micro
