"""Every key and shape of the released MFNet-3D checkpoint, from ../shared/reference."""

import os
from typing import Dict, Optional, Tuple

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "reference",
                         "mfnet3d_state_dict_400cls.txt")


def reference_state_dict(path: str = REFERENCE) -> Optional[Dict[str, Tuple[int, ...]]]:
  """``{key: shape}`` of the release's state dict; None where the file is not there."""
  if not os.path.exists(path):
    return None
  keys = {}
  for line in open(path):
    if line.startswith("#") or not line.strip():
      continue
    name, shape, _ = line.rstrip("\n").split("\t")
    keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  return keys
