"""kpsem-jax: KPSEM (Key Point Shifts Embedding Module) and MFNet-3D in JAX/Flax.

Channels-last throughout: video tensors are ``(B, T, H, W, C)``. Importing the package sets
no option; entry points call :func:`kpsem_jax.jax_options.configure` first.
"""

__version__ = "0.1.0"
