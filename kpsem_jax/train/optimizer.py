"""The optimizer of every config: MFNet's SGD protocol (Nesterov momentum, weight decay,
halved warm-up lr, step decay), pretrained layers at a lower lr, optional clipping of the
KPSEM branch's gradient and of the whole gradient."""

from typing import Any, Mapping, Optional

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
  """SGD (Nesterov) momentum with weight decay; pretrained leaves at ``pretrained_lr_mult``,
  KPSEM's split MLPs at ``split_mlp_lr_mult`` (default 1) times the lr, or, with
  ``split_mlp_adam_lr`` > 0, by Adam at that lr (following the schedule's shape: the
  warm-up and decays, not the main lr's size), and at ``pretrained_lr_mult`` of that when
  they were loaded (``pretrained``, a tree of bools); ``schedule`` defaults to
  :func:`lr_schedule`. ``optimizer.kpsem_clip_grad_norm`` > 0 first scales the gradient of
  the KPSEM branch's parameters (the ``kpsem`` subtree) down to that norm, the rest
  untouched; ``optimizer.clip_grad_norm`` > 0 then scales the whole gradient down to that
  global norm (0: no clipping)."""
  o = config.optimizer
  schedule = schedule or lr_schedule(config)

  def sgd(mult):
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(lambda s: schedule(s) * mult, momentum=o.momentum,
                                 nesterov=o.nesterov))

  split_mult = float(o.get("split_mlp_lr_mult", 1.0))
  adam_lr = float(o.get("split_mlp_adam_lr", 0.0) or 0.0)
  own = split_mult != 1.0 or adam_lr > 0  # the split MLPs get their own transformation

  # A split MLP keeps its own transformation when loaded too, at pretrained_lr_mult of it.
  loaded_split = pretrained is not None and own and any(
      bool(p) and is_split_mlp(path)
      for path, p in jax.tree_util.tree_flatten_with_path(pretrained)[0])

  def labels(params):
    def label(path, p):
      if own and is_split_mlp(path):
        return "split_mlp_pretrained" if p else "split_mlp"
      return "pretrained" if p else "new"
    loaded = jax.tree.map(lambda _: False, params) if pretrained is None else pretrained
    return jax.tree_util.tree_map_with_path(label, loaded)

  def split_tx(mult):
    if adam_lr > 0:  # scale-free steps, the main schedule's shape, independent of its lr
      return optax.adam(lambda s: schedule(s) * mult * (adam_lr / o.lr if o.lr else 0.0))
    return sgd(split_mult * mult)

  if pretrained is None and not own:
    tx = sgd(1.0)
  else:
    transforms = {"pretrained": sgd(o.pretrained_lr_mult), "new": sgd(1.0),
                  "split_mlp": split_tx(1.0)}
    if loaded_split:  # only then: the optimizer state of every other run keeps its layout
      transforms["split_mlp_pretrained"] = split_tx(o.pretrained_lr_mult)
    tx = optax.multi_transform(transforms, labels)
  clips = []
  branch_clip = float(o.get("kpsem_clip_grad_norm", 0.0) or 0.0)
  if branch_clip > 0:
    clips.append(optax.masked(optax.clip_by_global_norm(branch_clip), kpsem_mask))
  clip = float(o.get("clip_grad_norm", 0.0) or 0.0)
  if clip > 0:
    clips.append(optax.clip_by_global_norm(clip))
  return optax.chain(*clips, tx) if clips else tx


def is_split_mlp(path) -> bool:
  """Whether a parameter path is one of KPSEM's split MLPs (``kpsem/mlp_*``)."""
  names = [getattr(k, "key", str(k)) for k in path]
  return len(names) == 2 and names[0] == "kpsem" and names[1].startswith("mlp_")


def kpsem_mask(params) -> Any:
  """True on the leaves of the KPSEM branch (the top-level ``kpsem`` subtree), else False."""
  return {name: jax.tree.map(lambda _, on=(name == "kpsem"): on, subtree)
          for name, subtree in params.items()}


# The optimizer fields that decide the shape of its state, and their value before a field
# existed (a checkpoint's config written before it).
STATE_FIELDS = {"kpsem_clip_grad_norm": 0.0, "clip_grad_norm": 0.0, "split_mlp_lr_mult": 1.0,
                "split_mlp_adam_lr": 0.0}


def state_differences(saved: Mapping[str, Any], config: Mapping[str, Any]) -> list:
  """``["optimizer.x: checkpoint A, config B", ...]`` for the :data:`STATE_FIELDS` of two
  ``optimizer`` config sections whose optimizer states differ in shape (a clip on or off,
  the split MLPs' own transformation or not)."""
  def layout(o):
    get = lambda name: float(o.get(name, STATE_FIELDS[name]) or 0.0)  # noqa: E731
    return {"kpsem_clip_grad_norm": get("kpsem_clip_grad_norm") > 0,
            "clip_grad_norm": get("clip_grad_norm") > 0,
            "split_mlp_lr_mult": get("split_mlp_lr_mult") != 1.0 or get("split_mlp_adam_lr") > 0,
            "split_mlp_adam_lr": get("split_mlp_adam_lr") > 0}
  old, new = layout(saved or {}), layout(config or {})
  return [f"optimizer.{name}: checkpoint {saved.get(name, STATE_FIELDS[name])}, config "
          f"{config.get(name, STATE_FIELDS[name])}"
          for name in STATE_FIELDS if old[name] != new[name]
          and saved.get(name, STATE_FIELDS[name]) != config.get(name, STATE_FIELDS[name])]
