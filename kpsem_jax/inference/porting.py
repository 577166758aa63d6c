"""Name and layout mapping between the PyTorch MFNet ``state_dict`` and Flax variables.

Pure functions on numpy arrays, no torch. A Flax leaf at ``collection`` / ``path`` maps to
one PyTorch key:

=================================  =====================================================
Flax (``backbone/`` stripped)      PyTorch
=================================  =====================================================
``params  .../conv/kernel``        ``....conv.weight``  ``(O, I/g, kt, kh, kw)`` <-
                                   ``(kt, kh, kw, I/g, O)``
``params  .../bn/scale|bias``      ``....bn.weight|bias``
``batch_stats .../bn/mean|var``    ``....bn.running_mean|running_var``
``params  classifier/kernel|bias`` ``classifier.weight`` (transposed) ``|bias``
=================================  =====================================================
"""

from typing import Dict, Mapping, Tuple

from flax import traverse_util
import numpy as np

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: Tuple[str, ...]) -> str:
  """The PyTorch ``state_dict`` key of a Flax leaf (``backbone/`` prefix dropped)."""
  if path and path[0] == "backbone":
    path = path[1:]
  leaf = _LEAF_NAMES.get((collection, path[-1]))
  if leaf is None:
    raise KeyError(f"no PyTorch name for {collection}/{'/'.join(path)}")
  return ".".join(path[:-1] + (leaf,))


def torch_to_flax_array(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax leaf at ``path``."""
  value = np.asarray(value)
  if path[-1] == "kernel":
    if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
      return value.T
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  return value


def flax_to_torch_array(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A Flax leaf in PyTorch's layout (inverse of :func:`torch_to_flax_array`)."""
  value = np.asarray(value)
  if path[-1] == "kernel":
    if value.ndim == 2:
      return value.T
    nd = value.ndim - 2
    return np.transpose(value, (nd + 1, nd) + tuple(range(nd)))
  return value


def expected_torch_keys(variables: Mapping) -> Dict[str, Tuple[str, Tuple[str, ...]]]:
  """``{torch key: (collection, flax path)}`` for every backbone/classifier leaf."""
  out = {}
  for collection in ("params", "batch_stats"):
    for path in traverse_util.flatten_dict(variables.get(collection, {})):
      if path[0] == "kpsem":
        continue
      out[torch_key(collection, path)] = (collection, path)
  return out
