"""kpsem-jax: KPSEM (Key Point Shifts Embedding Module) and MFNet-3D in JAX/Flax.

Channels-last throughout: video tensors are ``(B, T, H, W, C)``.
"""

__version__ = "0.1.0"
