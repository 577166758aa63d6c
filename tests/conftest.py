from kpsem_jax import jax_options

# The entry point's JAX options, as train.py and the CLIs set them: no YNNPACK fusions on
# XLA:CPU, and classic threefry, whose random initialisers XLA:CPU compiles about 3x
# faster (only the random draws change; no test depends on particular random values).
jax_options.configure()
