"""The optimizer of every config: MFNet's SGD protocol (Nesterov momentum, weight decay,
halved warm-up lr, step decay), pretrained layers at a lower lr, optional global-norm
clipping."""

from typing import Any, Optional

import jax
import optax


def lr_schedule(config) -> optax.Schedule:
  """Halved for the first ``warmup_steps`` (MFNet's protocol), then step decay."""
  o = config.optimizer
  boundaries = {int(o.warmup_steps): 2.0} if o.warmup_steps else {}
  for b in o.decay_steps:
    boundaries[int(b)] = boundaries.get(int(b), 1.0) * o.decay_factor
  return optax.piecewise_constant_schedule(o.lr * (0.5 if o.warmup_steps else 1.0), boundaries)


def create_optimizer(config, pretrained: Optional[Any] = None,
                     schedule: Optional[optax.Schedule] = None) -> optax.GradientTransformation:
  """SGD (Nesterov) momentum with weight decay; pretrained leaves at ``pretrained_lr_mult``;
  ``schedule`` defaults to :func:`lr_schedule`. ``optimizer.clip_grad_norm`` > 0 first scales
  the whole gradient down to that global norm (0: no clipping)."""
  o = config.optimizer
  schedule = schedule or lr_schedule(config)

  def sgd(mult):
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(lambda s: schedule(s) * mult, momentum=o.momentum,
                                 nesterov=o.nesterov))

  if pretrained is None:
    tx = sgd(1.0)
  else:
    labels = jax.tree.map(lambda p: "pretrained" if p else "new", pretrained)
    tx = optax.multi_transform({"pretrained": sgd(o.pretrained_lr_mult), "new": sgd(1.0)},
                               labels)
  clip = float(o.get("clip_grad_norm", 0.0) or 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
