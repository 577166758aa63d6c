"""kpsem-jax: KPSEM (Key Point Shifts Embedding Module) and MFNet-3D in JAX/Flax.

Channels-last throughout: video tensors are ``(B, T, H, W, C)``.
"""

import os

__version__ = "0.1.0"

# jaxlib 0.10's XLA:CPU hands element-wise and reduction fusions to its experimental YNNPACK
# backend, which segfaults in a transpose (slinky ``can_fuse``) on KPSEM's gradient with
# one AReSE set (G=1). Plain XLA fusions are as fast on our models (README, "Known XLA:CPU
# issue"), so they are used unless XLA_FLAGS already chooses. Effective only when this
# package is imported before JAX starts its CPU backend (train.py, predict, tests do).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
if YNN_FLAG.lstrip("-") not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_FLAG}=".strip()
