"""Layer-level timing of ``layers.conv``'s strategies beside ``torch.nn.functional.conv3d``.

    .venv/bin/python benchmarks/conv_strategies.py [--repeats=5] [--threads=2]

For each MFNet-3D layer shape (batch 1, 16x224x224 input), forward and forward+backward,
each JAX strategy and PyTorch are run interleaved; the table prints PyTorch's median in
ms and each strategy's median as a ratio to it (JAX / PyTorch, lower is faster), with the
strategy's largest relative difference from PyTorch's output. ``auto`` is not a column of
its own: it picks one of the others per layer (the header says which here).
"""

import time

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "timed runs per measurement (median)")
flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads (this machine: 2 cores)")

# (name, C_in, C_out, kernel, strides, groups, input (T, H, W)) of MFNet-3D at 16x224x224.
LAYERS = [
    ("conv1 3x5x5 3->16 /(1,2,2)", 3, 16, (3, 5, 5), (1, 2, 2), 1, (16, 224, 224)),
    ("conv2 m1 3x3x3 g16 96", 96, 96, (3, 3, 3), (1, 1, 1), 16, (8, 56, 56)),
    ("conv3 m1 3x3x3 g16 192", 192, 192, (3, 3, 3), (1, 1, 1), 16, (8, 28, 28)),
    ("conv4 m1 3x3x3 g16 384", 384, 384, (3, 3, 3), (1, 1, 1), 16, (8, 14, 14)),
    ("conv4 m2 1x3x3 g16 384", 384, 384, (1, 3, 3), (1, 1, 1), 16, (8, 14, 14)),
    ("conv4 i1 1x1x1 384->96", 384, 96, (1, 1, 1), (1, 1, 1), 1, (8, 14, 14)),
    ("conv5 m1 3x3x3 g16 768 /(1,2,2)", 384, 768, (3, 3, 3), (1, 2, 2), 16, (8, 14, 14)),
]


def median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    fn()  # untimed: wakes this framework's threads; the other framework's have gone quiet
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  from kpsem_jax.models import cpu_kernels, layers  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.layers import STRATEGIES, conv  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(FLAGS.threads)
  strategies = [s for s in STRATEGIES if s != "auto"]
  auto = layers.auto_strategy(np.zeros((1, 8, 56, 56, 96)), np.zeros((3, 3, 3, 6, 96)),
                              jax.default_backend(), cpu_kernels.available())
  print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} with "
        f"{FLAGS.threads} threads; medians of {FLAGS.repeats}; ratios JAX/PyTorch; auto is "
        f"{auto} here (patches_grad for 1x1x1 kernels)")
  header = f"{'layer':32s} {'pass':8s} {'torch ms':>9s} " + " ".join(f"{s:>16s}" for s in strategies)
  print(header)
  for name, c_in, c_out, window, strides, groups, size in LAYERS:
    rng = np.random.RandomState(0)
    x = rng.randn(1, *size, c_in).astype(np.float32)
    k = (rng.randn(*window, c_in // groups, c_out) * (2.0 / (c_in // groups * np.prod(window))) ** 0.5
         ).astype(np.float32)
    padding = tuple((w // 2, w // 2) for w in window)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    kt = torch.from_numpy(np.ascontiguousarray(k.transpose(4, 3, 0, 1, 2)))
    torch_args = dict(stride=strides, padding=tuple(w // 2 for w in window), groups=groups)
    with torch.no_grad():
      ref = torch.nn.functional.conv3d(xt, kt, **torch_args).numpy().transpose(0, 2, 3, 4, 1)
    xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()

    def torch_fwd():
      with torch.no_grad():
        torch.nn.functional.conv3d(xt, kt, **torch_args)

    def torch_fb():
      torch.nn.functional.conv3d(xg, kg, **torch_args).sum().backward()

    jax_fns = {}
    for s in strategies:
      f = jax.jit(lambda a, b, s=s: conv(a, b, strides, padding, groups, s))
      g = jax.jit(jax.grad(lambda a, b, s=s: jnp.sum(conv(a, b, strides, padding, groups, s)),
                           argnums=(0, 1)))
      err = float(np.abs(np.asarray(f(x, k)) - ref).max() / np.abs(ref).max())
      jax.block_until_ready(g(x, k))
      jax_fns[s] = (lambda f=f: jax.block_until_ready(f(x, k)),
                    lambda g=g: jax.block_until_ready(g(x, k)), err)
    torch_fwd(), torch_fb()
    for pass_name, index, torch_fn in (("forward", 0, torch_fwd), ("fwd+bwd", 1, torch_fb)):
      times = {"torch": []}
      for _ in range(FLAGS.repeats):  # interleaved
        times["torch"].append(median_time(torch_fn, 1))
        for s in strategies:
          times.setdefault(s, []).append(median_time(jax_fns[s][index], 1))
      base = float(np.median(times["torch"]))
      cells = " ".join(f"{np.median(times[s]) / base:7.2f}x (e{jax_fns[s][2]:.0e})"
                       for s in strategies)
      print(f"{name:32s} {pass_name:8s} {base * 1e3:9.1f} {cells}", flush=True)


if __name__ == "__main__":
  app.run(main)
