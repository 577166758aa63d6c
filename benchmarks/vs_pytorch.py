"""MFNet-3D and MF-KPSEM in JAX beside PyTorch: the same weights, the same inputs, one run.

    .venv/bin/python benchmarks/vs_pytorch.py [--batches=1,2,4,8] [--repeats=3] [--threads=2]

The PyTorch side is the test suite's reference MFNet (``kpsem_jax/testing/torch_mfnet.py``, eager,
``--threads`` intra-op threads) with random weights and BatchNorm statistics, and its
MF-KPSEM (``kpsem_jax/testing/torch_kpsem.py``); the JAX side is that checkpoint through
``kpsem_jax.convert`` (jit; ``--model=mf_kpsem`` adds a fresh KPSEM branch and classifier,
copied into the PyTorch MF-KPSEM), once per convolution strategy (``layers.conv``). Runs are interleaved, each after half a second idle (PyTorch's OpenMP
threads spin after each op), and the medians compared:

- inference at ``(B, 16, 224, 224, 3)`` for each ``--batches``: JAX/PyTorch time ratios
  of MFNet and MF-KPSEM and the logits' largest difference relative to the largest logit;
  in each framework, MF-KPSEM's forward time over MFNet's (the KPSEM overhead), and in JAX
  the KPSEM branch alone, timed on MF-KPSEM's conv4 map, over MFNet's forward time (the
  same overhead without the run-to-run drift of two whole forwards);
- ``torch.compile`` (inductor) of the same MFNet beside eager PyTorch (``--torch_compile``;
  its first call, the compilation, is timed and printed apart);
- per batch, the arithmetic rate of MFNet's forward: GFLOP/s (XLA's FLOP count of the
  forward with XLA convolutions, multiply-add = 2, over the median time) for JAX (the first
  strategy), eager PyTorch and torch.compile, and as a fraction of the machine's peak:
  usable cores x clock x FLOPs per cycle per core, where the clock is ``cpu MHz`` of
  /proc/cpuinfo (the first core's) and FLOPs per cycle are 2 FMA units x SIMD width x 2
  (64 for Intel's AVX-512, 32 for AVX2 with FMA and for AMD's AVX-512, which runs on 256-bit
  pipes, 8 otherwise), unless ``--peak_gflops`` says;
- one SGD training step (forward, backward, Nesterov momentum update) of a narrow MFNet on
  ``--train_shape``: JAX/PyTorch time ratio and the loss difference.

Needs torch (``pip install torch==2.13.0``, the CPU build; a test-only dependency).
"""

import os
import tempfile
import time

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["1", "2", "4", "8"], "inference batch sizes")
flags.DEFINE_integer("repeats", 3, "timed runs per measurement (median)")
flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads (this machine: 2 cores)")
flags.DEFINE_list("strategies", ["auto", "xla"], "layers.conv strategies for the JAX side")
flags.DEFINE_list("train_shape", ["8", "8", "112", "112"], "training batch, frames, height, width")
flags.DEFINE_bool("torch_compile", True, "also time torch.compile (inductor) of MFNet")
flags.DEFINE_float("peak_gflops", 0.0, "the machine's float32 peak (0: from /proc/cpuinfo)")



SETTLE_S = 0.5  # idle before each timed run: PyTorch's OpenMP threads spin for a while after
# each op and would otherwise take the CPU from the JAX run that follows them


def timed(fn):
  time.sleep(SETTLE_S)
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def machine_peak():
  """``(GFLOP/s, how)``: usable cores x clock x FLOPs per cycle per core (see the docstring)."""
  cores = len(os.sched_getaffinity(0))
  mhz, flags_line, vendor = 0.0, "", ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("cpu MHz") and not mhz:
          mhz = float(line.split(":")[1])
        elif line.startswith("flags") and not flags_line:
          flags_line = line
        elif line.startswith("vendor_id") and not vendor:
          vendor = line.split(":")[1].strip()
  except OSError:
    pass
  cpu_flags = set(flags_line.split(":")[-1].split())
  # AMD's cores (Zen 4) run AVX-512 on their two 256-bit FMA pipes: AVX2's peak.
  wide = "avx512f" in cpu_flags and vendor != "AuthenticAMD"
  per_cycle = 64 if wide else 32 if {"avx2", "fma"} <= cpu_flags else 8
  peak = cores * mhz / 1000 * per_cycle
  return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from kpsem_jax.testing import torch_kpsem  # pylint: disable=import-outside-toplevel
  from kpsem_jax.testing import torch_mfnet  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from kpsem_jax import convert
  from kpsem_jax.train import train_step as ts  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import normalize  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import VideoClassifier, create_model  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(FLAGS.threads)
  print(f"JAX {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} with "
        f"{FLAGS.threads} threads; medians of {FLAGS.repeats} interleaved runs")
  tmp = tempfile.mkdtemp()
  net = torch_mfnet.randomize(torch_mfnet.MFNET_3D(num_classes=400)).eval()
  torch.save(net.state_dict(), os.path.join(tmp, "mfnet.pth"))
  quiet = lambda *a: None  # noqa: E731
  convert.run(os.path.join(tmp, "mfnet.pth"), os.path.join(tmp, "mfnet"), log=quiet)
  convert.run(os.path.join(tmp, "mfnet.pth"), os.path.join(tmp, "mf_kpsem"), model="mf_kpsem",
              log=quiet)

  kp_vars, _ = checkpoint.load_variables(os.path.join(tmp, "mf_kpsem"))
  kp_params = jax.device_get(kp_vars["params"])
  net_kpsem = torch_kpsem.MF_KPSEM(kp_params["kpsem"], kp_params["classifier"], num_classes=400)
  net_kpsem.load_state_dict({k: v for k, v in net.state_dict().items()
                             if not k.startswith("classifier.")}, strict=False)
  net_kpsem.eval()
  compiled = None
  if FLAGS.torch_compile:
    compiled = torch.compile(net)
    start = time.perf_counter()
    with torch.no_grad():
      compiled(torch.zeros(1, 3, 16, 224, 224))
    print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
  # FLOPs per clip of MFNet's forward, with XLA convolutions (XLA counts inside none of
  # the custom calls that auto uses on CPUs).
  mfnet_vars, mfnet_meta = checkpoint.load_variables(os.path.join(tmp, "mfnet"))
  counted = create_model(**mfnet_meta["model"], conv_strategy="xla")
  one = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32)
  cost = jax.jit(counted.apply).lower(mfnet_vars, one).compile().cost_analysis()
  flops_per_clip = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  peak, how = (FLAGS.peak_gflops, "--peak_gflops") if FLAGS.peak_gflops else machine_peak()
  print(f"MFNet forward: {flops_per_clip / 1e9:.2f} GFLOP per clip (XLA's count); machine "
        f"peak {peak:.0f} GFLOP/s ({how})")

  def jax_forward(path, conv_strategy):
    variables, meta = checkpoint.load_variables(path)
    model = create_model(**meta["model"], conv_strategy=conv_strategy)
    fn = jax.jit(lambda v, x: model.apply(v, x))
    return lambda x: np.asarray(jax.block_until_ready(fn(variables, x)))

  def jax_kpsem_branch(path):
    """``x -> branch``: the KPSEM branch alone on the model's conv4 map of ``x``."""
    variables, meta = checkpoint.load_variables(path)
    model = create_model(**meta["model"])
    stages = jax.jit(lambda v, x: model.apply(v, x, method=VideoClassifier.stages))
    branch = jax.jit(lambda v, f: model.apply(v, f, method=lambda m, f: m.kpsem(f)))
    def prepare(x):
      conv4 = stages(variables, x)["conv4"]
      return lambda: jax.block_until_ready(branch(variables, conv4))
    return prepare

  print("\ninference, (B, 16, 224, 224, 3); MFNet, then MF-KPSEM (JAX " +
        FLAGS.strategies[0] + "), then KPSEM overheads (MF-KPSEM time / MFNet time)")
  print(f"{'B':>3s} {'torch s':>8s} " + " ".join(
      f"{'JAX ' + s + ' s':>13s} {'ratio':>6s} {'max diff':>9s}" for s in FLAGS.strategies) +
        f" | {'torch KP s':>10s} {'JAX KP s':>9s} {'ratio':>6s} {'max diff':>9s}"
        f" | {'torch ovh':>9s} {'JAX ovh':>8s} {'JAX branch':>10s}"
        + (f" | {'compile s':>9s} {'ratio':>6s}" if compiled is not None else "")
        + f" | {'GFLOP/s JAX':>11s} {'torch':>6s}"
        + (f" {'compile':>7s}" if compiled is not None else "")
        + f" {'JAX %peak':>9s}")
  forwards = {s: jax_forward(os.path.join(tmp, "mfnet"), s) for s in FLAGS.strategies}
  kpsem_forward = jax_forward(os.path.join(tmp, "mf_kpsem"), FLAGS.strategies[0])
  kpsem_branch = jax_kpsem_branch(os.path.join(tmp, "mf_kpsem"))
  for b in (int(v) for v in FLAGS.batches):
    clips = np.random.RandomState(b).randint(0, 256, (b, 16, 224, 224, 3)).astype(np.uint8)
    x = np.asarray(normalize(clips))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    with torch.no_grad():
      ref = net(xt).numpy()
      ref_kpsem = net_kpsem(xt).numpy()
    for f in list(forwards.values()) + [kpsem_forward]:
      f(x)  # compile
    branch = kpsem_branch(x)
    branch()  # compile
    times = {k: [] for k in ["torch", "torch_kpsem", "kpsem", "branch", "compiled"]
             + FLAGS.strategies}
    outs = {}
    if compiled is not None:
      with torch.no_grad():
        compiled(xt)  # (re)compiles for this batch size, outside the timings
    for _ in range(FLAGS.repeats):
      with torch.no_grad():
        times["torch"].append(timed(lambda: net(xt))[0])
        if compiled is not None:
          times["compiled"].append(timed(lambda: compiled(xt))[0])
        times["torch_kpsem"].append(timed(lambda: net_kpsem(xt))[0])
      for s, f in forwards.items():
        t, outs[s] = timed(lambda f=f: f(x))
        times[s].append(t)
      t, outs["kpsem"] = timed(lambda: kpsem_forward(x))
      times["kpsem"].append(t)
      times["branch"].append(timed(branch)[0])
    med = {k: float(np.median(v)) if v else float("nan") for k, v in times.items()}
    rate = lambda t: b * flops_per_clip / t / 1e9  # noqa: E731
    diff = lambda a, r: np.abs(a - r).max() / np.abs(r).max()  # noqa: E731
    cells = " ".join(f"{med[s]:13.3f} {med[s] / med['torch']:6.2f} {diff(outs[s], ref):9.1e}"
                     for s in FLAGS.strategies)
    print(f"{b:3d} {med['torch']:8.3f} {cells} | {med['torch_kpsem']:10.3f} {med['kpsem']:9.3f} "
          f"{med['kpsem'] / med['torch_kpsem']:6.2f} {diff(outs['kpsem'], ref_kpsem):9.1e} | "
          f"{med['torch_kpsem'] / med['torch']:9.3f} "
          f"{med['kpsem'] / med[FLAGS.strategies[0]]:8.3f} "
          f"{med['branch'] / med[FLAGS.strategies[0]]:10.3f}"
          + (f" | {med['compiled']:9.3f} {med[FLAGS.strategies[0]] / med['compiled']:6.2f}"
             if compiled is not None else "")
          + f" | {rate(med[FLAGS.strategies[0]]):11.1f} {rate(med['torch']):6.1f}"
          + (f" {rate(med['compiled']):7.1f}" if compiled is not None else "")
          + f" {rate(med[FLAGS.strategies[0]]) / peak:9.3f}", flush=True)

  # ---- one training step of a narrow MFNet ---------------------------------------------------
  batch, frames, height, width = (int(v) for v in FLAGS.train_shape)
  kwargs = dict(conv1_channels=8, stage_channels=(32, 64, 128, 256), stage_depths=(1, 1, 2, 1),
                groups=8)
  small = torch_mfnet.randomize(torch_mfnet.MFNET_3D(num_classes=10, **kwargs)).train()
  torch.save(small.state_dict(), os.path.join(tmp, "small.pth"))
  convert.run(os.path.join(tmp, "small.pth"), os.path.join(tmp, "small"), log=quiet)
  variables, meta = checkpoint.load_variables(os.path.join(tmp, "small"))
  rng = np.random.RandomState(0)
  clips = rng.randint(0, 256, (batch, frames, height, width, 3)).astype(np.uint8)
  labels = rng.randint(0, 10, batch).astype(np.int32)
  x = np.asarray(normalize(clips))
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
  yt = torch.from_numpy(labels.astype(np.int64))
  opt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9, nesterov=True)

  def torch_step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(small(xt), yt)
    loss.backward()
    opt.step()
    return loss.item()

  tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
  steps = {}
  for s in FLAGS.strategies:
    model = create_model(**meta["model"], conv_strategy=s, batch_norm_axis=ts.DATA_AXIS)
    fn = ts.make_train_step(model, tx, lambda step: 0.01, jnp.float32,
                            ts.data_mesh(jax.devices()[:1]))
    state = ts.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                          variables["batch_stats"], tx.init(variables["params"]))
    steps[s] = [fn, jax.tree.map(jnp.copy, state)]  # the step donates its state
  # Both sides' inputs are ready in memory before the timings: PyTorch's normalised tensor
  # above, the uint8 micro-batch here on the JAX device (the step normalises it itself).
  clips_d, labels_d = jax.device_put((clips[None], labels[None]))
  first = {}
  for s, (fn, state) in steps.items():  # compile, and the first step's loss from equal weights
    steps[s][1], metrics = fn(state, clips_d, labels_d)
    first[s] = float(metrics["loss"])
  torch_loss = torch_step()
  times = {k: [] for k in ["torch"] + FLAGS.strategies}

  def jax_step(s):
    fn, state = steps[s]
    steps[s][1], metrics = fn(state, clips_d, labels_d)
    return jax.block_until_ready(metrics)

  for _ in range(FLAGS.repeats):
    times["torch"].append(timed(torch_step)[0])
    for s in steps:
      times[s].append(timed(lambda: jax_step(s))[0])
  base = np.median(times["torch"])
  print(f"\ntraining step, narrow MFNet (widths 32-256, groups 8), batch {batch} x {frames}x"
        f"{height}x{width}")
  print(f"torch {base:.3f} s; " + "; ".join(
      f"JAX {s} {np.median(times[s]):.3f} s, ratio {np.median(times[s]) / base:.2f}, first-step "
      f"loss diff {abs(first[s] - torch_loss):.1e}" for s in FLAGS.strategies))


if __name__ == "__main__":
  app.run(main)
