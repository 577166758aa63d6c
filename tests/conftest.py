import os
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))

# Partitionable threefry (JAX's default) makes XLA:CPU compile every random initializer
# for seconds; the classic threefry compiles 3x faster. Only the random draws change,
# and no test depends on particular random values.
jax.config.update("jax_threefry_partitionable", False)
