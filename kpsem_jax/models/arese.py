"""AReSE, the Adaptive Regional Shift Extractor (paper section 3.3), as pure functions.

Everything here works on one example and one AReSE set; the KPSEM module vmaps it over
the batch and over the G sets. Shapes: features ``F`` are ``(T, H, W, C)``; a frame is cut
into ``K = k * k`` regions by ``k - 1`` ordered split lines per axis, regions numbered
row-major (top-left first).

Coordinates are normalised to ``[-1, 1]`` at pixel centres, ``x_w = (2w + 1) / W - 1``,
and a key point is ``(x, y)`` (x horizontal). A blob that moves ``dx`` pixels right per
frame on a map of width ``W`` therefore has a shift of ``2 dx / W``.

Where the paper is silent (docs/models.md, "Choices where the paper is silent"):
- split lines: ``k`` cell widths from a softmax of ``[0, logits]``, cut at their cumulative
  sums, so lines stay ordered and inside the map; zero logits give the equal split
  (the geometric centre ``O_i`` of Eq. 5 for K = 4);
- soft region masks with a temperature (in pixels): the key point of region r is the
  argmax of ``F - (1 - M_r) * (range(F) + 1)``, which is the paper's hard regional
  argmax/max as the temperature goes to 0 (``temperature=0`` is exactly hard), while
  ``V`` and the regional means stay differentiable in the split positions;
- ``match_gradient``: where Eq. 9's match weights pass their gradient: everywhere
  (``"paper"``: the derivative of this soft-mask forward, as autograd gives it), to the split
  lines only (``"splits"``, the default: the split MLP gets the same gradient as with
  "paper", the backbone none of Eq. 9's spikes), or nowhere (``"stopped"``: the split MLP
  learns only through Eq. 11's regional weights); :func:`key_point_shifts`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kpsem_jax.models import cpu_kernels


class AReSEOutput(NamedTuple):
  """What one AReSE set extracts from one clip (T frames, K regions, C channels)."""
  rkps: jax.Array  # (T-1, C, 2) regional key point shifts summed over regions
  #                 ((T-1, K, C, 2) kept per region: arese(..., sum_regions=False)).
  splits_x: jax.Array  # (T, k-1) vertical split lines (x positions).
  splits_y: jax.Array  # (T, k-1) horizontal split lines (y positions).
  coords: jax.Array  # (T, K, C, 2) key point (x, y) per region and channel.
  values: jax.Array  # (T, K, C) key point feature values V.
  shifts: jax.Array  # (T-1, K, C, 2) key point shifts S (Eq. 10).
  region_weights: jax.Array  # (T-1, K, C) regional weights W_R (Eq. 11).


def grid_size(num_regions: int) -> int:
  """``k`` with ``k * k == num_regions``; raises for a non-square region count."""
  k = int(round(num_regions ** 0.5))
  if k < 1 or k * k != num_regions:
    raise ValueError(f"num_regions must be a square (1, 4, 9, 16, ...), got {num_regions}")
  return k


def pixel_coords(n: int) -> jax.Array:
  """Normalised pixel-centre coordinates ``(n,)`` in ``(-1, 1)``."""
  return (2.0 * jnp.arange(n) + 1.0) / n - 1.0


def split_positions(logits: jax.Array) -> jax.Array:
  """Ordered split lines ``(..., k-1)`` in ``(-1, 1)`` from free logits ``(..., k-1)``."""
  zeros = jnp.zeros(logits.shape[:-1] + (1,), logits.dtype)
  widths = jax.nn.softmax(jnp.concatenate([zeros, logits], axis=-1), axis=-1)
  return -1.0 + 2.0 * jnp.cumsum(widths, axis=-1)[..., :-1]


def interval_masks(n: int, splits: jax.Array, temperature: float) -> jax.Array:
  """Membership ``(..., k, n)`` of the n pixel centres in the k intervals cut by ``splits``.

  ``splits`` is ``(..., k-1)``, ordered. Memberships sum to one over the k intervals.
  ``temperature`` is in pixels; 0 gives hard 0/1 membership.
  """
  coords = pixel_coords(n)
  offset = coords - splits[..., None]  # (..., k-1, n)
  if temperature > 0:
    right_of = jax.nn.sigmoid(offset / (temperature * 2.0 / n))
  else:
    right_of = (offset >= 0).astype(splits.dtype)
  ones = jnp.ones(splits.shape[:-1] + (1, n), splits.dtype)
  zeros = jnp.zeros_like(ones)
  return jnp.concatenate([ones, right_of], axis=-2) - jnp.concatenate([right_of, zeros], axis=-2)


def region_masks(splits_x: jax.Array, splits_y: jax.Array, height: int, width: int,
                 temperature: float) -> jax.Array:
  """Region masks ``(T, K, H, W)`` from split lines ``(T, k-1)`` per axis (row-major K)."""
  mx = interval_masks(width, splits_x, temperature)  # (T, k, W)
  my = interval_masks(height, splits_y, temperature)  # (T, k, H)
  masks = my[:, :, None, :, None] * mx[:, None, :, None, :]  # (T, k_y, k_x, H, W)
  return masks.reshape(masks.shape[0], -1, height, width)


ARGMAX_STRATEGIES = ("jnp", "cpu_kernel")


def regional_argmax(features: jax.Array, masks: jax.Array, penalty: jax.Array,
                    strategy: str = "jnp") -> jax.Array:
  """Index ``(T, K, C)`` of the first maximum over P of ``features - (1 - masks) * penalty``.

  ``features`` ``(T, P, C)``, ``masks`` ``(T, K, P)``, ``penalty`` ``(T, C)``.
  ``strategy``: ``jnp`` (``jnp.argmax``, any platform) or ``cpu_kernel``
  (:func:`kpsem_jax.models.cpu_kernels.regional_argmax`: the same indices, 26 ms -> 2.5 ms on
  MFNet's conv4 map with G=8 on a CPU). No gradient (indices).
  """
  if strategy not in ARGMAX_STRATEGIES:
    raise ValueError(f"unknown argmax strategy {strategy!r}; choose one of "
                     f"{ARGMAX_STRATEGIES}")
  features, masks, penalty = (jax.lax.stop_gradient(a) for a in (features, masks, penalty))
  if strategy == "cpu_kernel":
    return cpu_kernels.regional_argmax(features, masks, penalty)
  scores = features[:, None, :, :] - (1.0 - masks[..., None]) * penalty[:, None, None, :]
  return jnp.argmax(scores, axis=2)


MATCH_GRADIENTS = ("paper", "splits", "stopped")


def _check_match_gradient(match_gradient: str) -> None:
  if match_gradient not in MATCH_GRADIENTS:
    raise ValueError(f"unknown match_gradient {match_gradient!r}; choose one of "
                     f"{MATCH_GRADIENTS}")


def key_points(features: jax.Array, masks: jax.Array, argmax_strategy: str = "jnp",
               match_gradient: str = "splits"):
  """Per region and channel key point (Eq. 6-7).

  Args:
    features: ``(T, H, W, C)``.
    masks: ``(T, K, H, W)``.
    argmax_strategy: see :func:`regional_argmax`.
    match_gradient: ``"paper"``: ``values`` carry the true derivative of the forward pass
      (into the features at the argmax, the masks there, and the soft-mask penalty
      ``range(F) + 1``); ``"splits"``: into the masks only (the features and the penalty
      enter as constants); ``"stopped"``: the penalty is a constant (the values' gradient
      is stopped in :func:`key_point_shifts` anyway).
  Returns:
    coords ``(T, K, C, 2)`` as normalised (x, y), and values ``(T, K, C)``.
  """
  _check_match_gradient(match_gradient)
  t, h, w, c = features.shape
  flat = features.reshape(t, h * w, c)
  m = masks.reshape(t, -1, h * w)
  penalty = jnp.max(flat, axis=1) - jnp.min(flat, axis=1) + 1.0  # (T, C)
  if match_gradient != "paper":
    penalty = jax.lax.stop_gradient(penalty)
  idx = regional_argmax(flat, m, penalty, argmax_strategy)  # (T, K, C)
  f_at = jnp.take_along_axis(flat[:, None], idx[:, :, None, :], axis=2)[:, :, 0, :]
  if match_gradient == "splits":
    f_at = jax.lax.stop_gradient(f_at)
  m_at = jnp.take_along_axis(m, idx, axis=2)
  values = f_at - (1.0 - m_at) * penalty[:, None, :]
  coords = jnp.stack([pixel_coords(w)[idx % w], pixel_coords(h)[idx // w]], axis=-1)
  return coords, values


def key_point_shifts(coords: jax.Array, values: jax.Array, epsilon: float = 0.1,
                     match_gradient: str = "splits") -> jax.Array:
  """Key point shifts ``S`` ``(T-1, K, C, 2)`` (Eq. 8-10).

  ``Delta[i, a, b] = I[i+1, b] - I[i, a]`` weighted by
  ``softmax_b(1 / (|V[i, a] - V[i+1, b]| + epsilon))`` and summed over b. The forward is
  Eq. 9 exactly in both ``match_gradient`` modes:

  - ``"paper"``: the match weights are differentiated, as PyTorch's autograd does for the
    paper's method: the only gradient the shifts pass to the backbone and to the split
    lines (the argmax coordinates themselves have none). ``d/dV 1 / (|dV| + 0.1)`` is up to
    ``1 / 0.1**2 = 100``, so this path's gradient arrives in spikes at the argmax pixels.
  - ``"splits"``: as "paper", but :func:`key_points` gave ``values`` a gradient into the
    region masks only, so the shifts pass Eq. 9's gradient to the split lines (the same
    as "paper" gives them) and none to the backbone's features.
  - ``"stopped"``: ``values`` enter with their gradient stopped; the shifts pass no
    gradient at all, and the split lines learn only through Eq. 11's regional weights.
  Under SGD at lr 0.05 without gradient clipping the "paper" gradient killed the branch's
  ReLUs or made the loss NaN (docs/models.md, "The match gradient").
  """
  _check_match_gradient(match_gradient)
  if match_gradient == "stopped":
    values = jax.lax.stop_gradient(values)
  delta = coords[1:, None, :, :, :] - coords[:-1, :, None, :, :]  # (T-1, Ka, Kb, C, 2)
  affinity = 1.0 / (jnp.abs(values[:-1, :, None, :] - values[1:, None, :, :]) + epsilon)
  weights = jax.nn.softmax(affinity, axis=2)  # (T-1, Ka, Kb, C)
  return jnp.sum(weights[..., None] * delta, axis=2)


def regional_weights(features: jax.Array, masks: jax.Array) -> jax.Array:
  """``W_R = softmax_K(avgpool_T,2(region means))`` ``(T-1, K, C)`` (Eq. 11)."""
  sums = jnp.einsum("tkhw,thwc->tkc", masks, features)
  means = sums / (jnp.sum(masks, axis=(2, 3))[..., None] + 1e-6)
  pooled = 0.5 * (means[:-1] + means[1:])
  return jax.nn.softmax(pooled, axis=1)


def arese(features: jax.Array, split_logits: jax.Array, temperature: float = 0.1,
          epsilon: float = 0.1, argmax_strategy: str = "jnp",
          match_gradient: str = "splits", sum_regions: bool = True) -> AReSEOutput:
  """One AReSE set on one clip.

  Args:
    features: ``(T, H, W, C)``.
    split_logits: ``(T, 2, k-1)``: per frame, the x then y split logits
      (see :func:`split_positions`); ``k - 1 = 0`` means a single region.
    temperature: region-mask softness in pixels (0: hard regions).
    epsilon: the 0.1 of Eq. 9.
    argmax_strategy: how the regional argmax is computed (:func:`regional_argmax`).
    match_gradient: ``"paper"``, ``"splits"`` or ``"stopped"`` (:func:`key_point_shifts`).
    sum_regions: Eq. 12's ``W_R * S`` summed over the K regions (True) or kept per region.
  Returns:
    :class:`AReSEOutput`; ``rkps = sum_K W_R * S`` is ``(T-1, C, 2)`` (Eq. 12, summed over
    the K regions: docs/models.md lists it among the choices where the paper is silent), or
    ``W_R * S`` ``(T-1, K, C, 2)`` with ``sum_regions=False``.
  """
  t, h, w, _ = features.shape
  splits_x = split_positions(split_logits[:, 0])
  splits_y = split_positions(split_logits[:, 1])
  masks = region_masks(splits_x, splits_y, h, w, temperature)
  coords, values = key_points(features, masks, argmax_strategy, match_gradient)
  shifts = key_point_shifts(coords, values, epsilon, match_gradient)
  weights = regional_weights(features, masks)
  rkps = weights[..., None] * shifts
  if sum_regions:
    rkps = jnp.sum(rkps, axis=1)
  return AReSEOutput(rkps, splits_x, splits_y, coords, values, shifts, weights)


def centre_mlp(features: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array,
               b2: jax.Array) -> jax.Array:
  """Adaptive split logits ``(T, 2, k-1)`` from ``(T, H, W, C)`` (Eq. 4, our MLP).

  Global average pool per frame -> Dense(C, hidden) -> ReLU -> Dense(hidden, 2 (k-1)),
  shared across frames. With ``w2 = b2 = 0`` (its initialisation) the split is the
  geometric one.
  """
  pooled = jnp.mean(features, axis=(1, 2))  # (T, C)
  out = jax.nn.relu(pooled @ w1 + b1) @ w2 + b2
  return out.reshape(out.shape[0], 2, -1)
