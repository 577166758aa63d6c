"""How far KPSEM's adaptive split lines moved from where they start, in feature-map pixels.

A split MLP starts at the equal split (the geometric centre for K = 4); whether training
moved it, and whether it places the lines differently for different videos, is read off
the split lines of many clips. Pure functions of arrays, plus one that runs a model.
"""

from typing import Dict

import jax
import numpy as np


def equal_splits(k: int) -> np.ndarray:
  """The ``k - 1`` equal split positions ``(k-1,)`` in normalised coordinates."""
  return -1.0 + 2.0 * np.arange(1, k) / k


def movement(splits_x: np.ndarray, splits_y: np.ndarray, width: int, height: int
             ) -> Dict[str, float]:
  """Statistics of split lines ``(..., N, T, k-1)`` per axis (N clips, leading axes such as
  the G sets), in pixels of a ``width`` x ``height`` map (a normalised unit is half the map).

  - ``from_start``: mean absolute distance of a line from its equal-split start;
  - ``across_videos``: standard deviation over the N clips of a line's position, averaged
    over the other axes (0 when every clip gets the same lines);
  - ``largest_from_start``: the largest distance of any line from its start;
  - ``spread``: standard deviation of the lines' positions about their starts, over every
    clip, frame, set and line.
  """
  splits_x, splits_y = np.asarray(splits_x, np.float64), np.asarray(splits_y, np.float64)
  k = splits_x.shape[-1] + 1
  if k < 2:
    return dict(from_start=0.0, across_videos=0.0, largest_from_start=0.0, spread=0.0)
  start = equal_splits(k)
  dx = (splits_x - start) * width / 2.0
  dy = (splits_y - start) * height / 2.0
  moved = np.concatenate([np.abs(dx).ravel(), np.abs(dy).ravel()])
  spread = np.concatenate([(splits_x * width / 2.0).std(axis=-3).ravel(),
                           (splits_y * height / 2.0).std(axis=-3).ravel()])
  offsets = np.concatenate([dx.ravel(), dy.ravel()])
  return dict(from_start=float(moved.mean()), across_videos=float(spread.mean()),
              largest_from_start=float(moved.max()), spread=float(offsets.std()))


def of_model(model, variables, clips) -> Dict[str, float]:
  """:func:`movement` of a KPSEM model's split lines on normalised clips ``(N, T, H, W, 3)``
  (every set and frame); raises ``ValueError`` for a model without KPSEM."""
  _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(
      variables, clips)
  if "kpsem" not in state.get("intermediates", {}):
    raise ValueError("this model has no KPSEM branch: it has no split lines")
  sets = state["intermediates"]["kpsem"]["arese"][0]  # leading (G, N)
  features = model.apply(variables, clips[:1], method="stages")[model.kpsem_at]
  height, width = int(features.shape[2]), int(features.shape[3])
  return movement(np.asarray(sets.splits_x), np.asarray(sets.splits_y), width, height)
