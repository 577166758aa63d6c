"""Where MFNet-3D's CPU inference time goes: ours layer by layer, beside OpenVINO's counters.

    .venv/bin/pip install -r benchmarks/requirements-peers.txt   # benchmark-only packages
    .venv/bin/python benchmarks/layer_profile.py [--batch=1] [--threads=2] [--repeats=5]

Ours: every convolution and BatchNorm (+ReLU) of the MFNet-3D forward (400 classes, the
test suite's random reference weights converted) is recorded with its input's shape and
settings (flax's method interception), then each is timed alone, jitted as ``predict``
runs it (``conv_strategy="auto"``: oneDNN's convolutions where they are built), median of
``--repeats``; the whole forward is timed too, so the sum shows what the pieces leave out
(pooling, residual adds, the classifier, and what fusing them into neighbours saves).
Each grouped convolution is also timed on oneDNN's preferred (blocked) activation layout,
reordered in and out (the extension's ``forward_blocked`` target, which the models do not
use), interleaved with ours: the ratio says where a layout change would pay.
OpenVINO: the same weights exported by ``torch.onnx.export``, compiled with the FP32
precision hint, the latency hint and ``PERF_COUNT``; its executed nodes' times summed by
node type. Both at ``(--batch, 16, 224, 224, 3)``, ``--threads`` threads.
"""

import collections
import os
import tempfile
import time

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 1, "clips per forward pass")
flags.DEFINE_integer("threads", 2, "threads of both (this machine: 2 cores)")
flags.DEFINE_integer("repeats", 5, "timed runs per measurement (median)")


def median_time(fn, *args):
  fn(*args)  # compile / warm up
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    fn(*args)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def blocked_conv(x, kernel, strides, padding, groups):
  """The oneDNN forward on its preferred activation layouts (``forward_blocked``)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  out = (x.shape[0],) + tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(
      x.shape[1:4], kernel.shape[:3], strides, padding)) + (kernel.shape[-1],)
  return jax.ffi.ffi_call("kpsem_onednn_conv_forward_blocked",
                          jax.ShapeDtypeStruct(out, jnp.float32))(
      x, kernel, strides=np.asarray(strides, np.int64),
      pad_lo=np.asarray([p[0] for p in padding], np.int64),
      pad_hi=np.asarray([p[1] for p in padding], np.int64), groups=np.int64(groups))


def interleaved(fns, *args):
  """Medians of ``fns`` timed in turn ``--repeats`` times (each compiled first)."""
  import jax  # pylint: disable=import-outside-toplevel
  for fn in fns:
    jax.block_until_ready(fn(*args))
  times = [[] for _ in fns]
  for _ in range(FLAGS.repeats):
    for t, fn in zip(times, fns):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      t.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def ours(tmp):
  """``(rows, whole)``: per-layer ``(kind, name, seconds, blocked seconds or None)`` and the
  whole forward's time."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models import layers  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import create_model  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  variables, meta = checkpoint.load_variables(os.path.join(tmp, "mfnet3d"))
  model = create_model(**meta["model"], conv_strategy="auto")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(FLAGS.batch, 16, 224, 224, 3)),
                  jnp.float32)
  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (layers.Conv, layers.BatchNorm)):
      calls.append((module, args[0].shape))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  forward = jax.jit(lambda v, x: model.apply(v, x))
  whole = median_time(lambda: jax.block_until_ready(forward(variables, x)))
  rows = []
  for module, shape in calls:
    inp = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    if isinstance(module, layers.Conv):
      k = jnp.asarray(np.random.default_rng(2).normal(
          size=(*module.kernel_size, shape[-1] // module.groups, module.features)), jnp.float32)
      padding = layers.same_padding(module.kernel_size) if module.padding is None else module.padding
      fn = jax.jit(lambda a, b, m=module, p=padding: layers.conv(
          a, b, m.strides, p, m.groups, m.conv_strategy))
      blocked = None
      if module.groups > 1 and len(module.kernel_size) == 3:
        other = jax.jit(lambda a, b, m=module, p=padding: blocked_conv(
            a, b, tuple(m.strides), tuple(p), m.groups))
        seconds, blocked = interleaved([fn, other], inp, k)
      else:
        seconds = median_time(lambda: jax.block_until_ready(fn(inp, k)))
      kind = (f"conv {'x'.join(map(str, module.kernel_size))}"
              f"{' grouped' if module.groups > 1 else ''}")
    else:
      c = shape[-1]
      stats = [jnp.asarray(v, jnp.float32) for v in (np.zeros(c), np.ones(c), np.ones(c),
                                                     np.zeros(c))]
      fn = jax.jit(lambda a, m=module: layers.batch_norm_eval(a, *stats, relu=m.relu))
      seconds, blocked = median_time(lambda: jax.block_until_ready(fn(inp))), None
      kind = "BatchNorm+ReLU" if module.relu else "BatchNorm"
    rows.append((kind, f"{module.name} {tuple(shape)}", seconds, blocked))
  return rows, whole


def openvino_counters(tmp):
  """``(node type -> seconds, total)`` of OpenVINO's executed nodes, medians of the runs."""
  import openvino as ov  # pylint: disable=import-outside-toplevel
  path = os.path.join(tmp, "mfnet3d.onnx")
  core = ov.Core()
  compiled = core.compile_model(core.read_model(path), "CPU", {
      "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
      "INFERENCE_NUM_THREADS": FLAGS.threads, "PERF_COUNT": True})
  request = compiled.create_infer_request()
  x = np.random.default_rng(0).normal(size=(FLAGS.batch, 3, 16, 224, 224)).astype(np.float32)
  request.infer({0: x})
  per_run, totals = [], []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    request.infer({0: x})
    totals.append(time.perf_counter() - start)
    by_type = collections.Counter()
    for info in request.get_profiling_info():
      if info.status == info.Status.EXECUTED:
        by_type[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds()
    per_run.append(by_type)
  types = set().union(*per_run)
  return {t: float(np.median([r[t] for r in per_run])) for t in types}, float(np.median(totals))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()
  import torch  # pylint: disable=import-outside-toplevel
  from kpsem_jax import convert  # pylint: disable=import-outside-toplevel
  from kpsem_jax.testing import torch_mfnet  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(FLAGS.threads)
  tmp = tempfile.mkdtemp()
  net = torch_mfnet.randomize(torch_mfnet.MFNET_3D(num_classes=400)).eval()
  torch.save(net.state_dict(), os.path.join(tmp, "mfnet.pth"))
  convert.run(os.path.join(tmp, "mfnet.pth"), os.path.join(tmp, "mfnet3d"), log=lambda *a: None)
  torch.onnx.export(net, (torch.zeros(FLAGS.batch, 3, 16, 224, 224),),
                    os.path.join(tmp, "mfnet3d.onnx"), input_names=["clips"],
                    output_names=["logits"], dynamo=True)
  rows, whole = ours(tmp)
  counters, ov_total = openvino_counters(tmp)
  print(f"MFNet-3D, ({FLAGS.batch}, 16, 224, 224, 3), {FLAGS.threads} threads, medians of "
        f"{FLAGS.repeats}")
  print(f"\nkpsem-jax: whole forward {whole:.3f} s; its convolutions and BatchNorms timed "
        "one by one:")
  kinds = collections.defaultdict(lambda: [0, 0.0])
  for kind, _, seconds, _ in rows:
    kinds[kind][0] += 1
    kinds[kind][1] += seconds
  for kind, (count, seconds) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
    print(f"  {kind:24s} {count:3d} layers {seconds:7.3f} s  {100 * seconds / whole:5.1f}%")
  parts = sum(r[2] for r in rows)
  print(f"  {'sum of the layers':24s}            {parts:7.3f} s  {100 * parts / whole:5.1f}%")
  print("  the ten slowest:")
  for kind, name, seconds, _ in sorted(rows, key=lambda r: -r[2])[:10]:
    print(f"    {seconds * 1000:7.1f} ms  {kind:22s} {name}")
  print("  grouped convolutions on oneDNN's blocked layout (reorders included), by input:")
  shapes = collections.defaultdict(lambda: [0, 0.0, 0.0])
  for kind, name, seconds, blocked in rows:
    if blocked is not None:
      key = f"{kind} {name.split(' ', 1)[1]}"
      shapes[key][0] += 1
      shapes[key][1] += seconds
      shapes[key][2] += blocked
  for key, (count, seconds, blocked) in shapes.items():
    print(f"    {key:44s} x{count}: ours {seconds * 1000:7.1f} ms, blocked "
          f"{blocked * 1000:7.1f} ms ({blocked / seconds:.2f})")
  counted = sum(counters.values())
  print(f"\nOpenVINO FP32: {ov_total:.3f} s a forward, {counted:.3f} s in its counters, by "
        "node type:")
  for node_type, seconds in sorted(counters.items(), key=lambda kv: -kv[1]):
    if seconds >= 0.0005:
      print(f"  {node_type:40s} {seconds:7.3f} s  {100 * seconds / counted:5.1f}%")


if __name__ == "__main__":
  app.run(main)
