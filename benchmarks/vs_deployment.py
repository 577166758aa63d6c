"""CPU inference beside the runtimes models are deployed with: ONNX Runtime and OpenVINO.

    .venv/bin/pip install -r benchmarks/requirements-peers.txt   # benchmark-only packages
    .venv/bin/python benchmarks/vs_deployment.py [--batches=1,8] [--repeats=5] [--threads=2]

One process, the same weights everywhere: the test suite's reference PyTorch MFNet-3D (400
classes, random weights and BatchNorm statistics) and its MF-KPSEM, exported by
``torch.onnx.export`` (FP32, one file per batch size), served by ONNX Runtime (CPU execution
provider, ``--threads`` intra-op threads, every graph optimisation) and OpenVINO (CPU, FP32
precision hint, latency hint, ``--threads`` threads); beside them the kpsem-jax forward of
the same weights converted by ``kpsem_jax.convert`` (jit, ``conv_strategy="auto"``: oneDNN
convolutions on CPUs, as ``predict`` runs it; XLA:CPU uses every core it may, which is
``--threads`` on a machine of that many) and eager PyTorch; with ``--openvino_bf16``, also
OpenVINO's bf16 precision hint (what a CPU without bf16 units does with it is OpenVINO's)
and kpsem-jax's own bfloat16 inference (``predict --precision=bfloat16``: the backbone in
bf16 on oneDNN's bf16 convolutions; row ``kpsem-jax bf16``);
with ``--own_onnx``, also both runtimes serving the ONNX file ``python -m kpsem_jax.export
--format=onnx`` writes of the converted checkpoint (uint8 clips in, normalisation inside;
rows ``ort (ours)`` and ``openvino (ours)``). For each model and batch of
``(B, 16, 224, 224, 3)`` clips the runs are interleaved, each after half a second idle, and
the medians compared: each runtime's time, kpsem-jax's time over it (below 1: kpsem-jax is
faster), and its logits' largest difference from eager PyTorch's relative to the largest
logit. A model a runtime cannot load is reported in one line and skipped.
"""

import os
import tempfile
import time

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["1", "8"], "inference batch sizes")
flags.DEFINE_integer("repeats", 5, "timed runs per measurement (median)")
flags.DEFINE_integer("threads", 2, "threads of every runtime (this machine: 2 cores)")
flags.DEFINE_list("models", ["mfnet3d", "mf_kpsem"], "mfnet3d and/or mf_kpsem")
flags.DEFINE_bool("openvino_bf16", True, "also OpenVINO with the bf16 precision hint (where "
                  "the CPU has bf16 units; the reference for a bf16 mode)")

flags.DEFINE_bool("own_onnx", True, "also serve kpsem-jax's own ONNX export (export "
                  "--format=onnx) with both runtimes")

SETTLE_S = 0.5  # idle before each timed run: one runtime's spinning threads would slow the next


def timed(fn):
  time.sleep(SETTLE_S)
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def export_onnx(torch, net, batch: int, path: str) -> str:
  """``net`` as an ONNX file for ``(batch, 3, 16, 224, 224)`` inputs (the dynamo exporter,
  else TorchScript's); returns the exporter's name."""
  x = torch.zeros(batch, 3, 16, 224, 224)
  try:
    torch.onnx.export(net, (x,), path, input_names=["clips"], output_names=["logits"],
                      dynamo=True)
    return "dynamo"
  except Exception:  # pylint: disable=broad-except
    torch.onnx.export(net, (x,), path, input_names=["clips"], output_names=["logits"],
                      dynamo=False, opset_version=17)
    return "torchscript"


def onnxruntime_session(path: str, threads: int):
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return lambda x: session.run(None, {"clips": x})[0]


def openvino_model(path: str, threads: int, precision: str = "f32"):
  import openvino as ov  # pylint: disable=import-outside-toplevel
  core = ov.Core()
  compiled = core.compile_model(core.read_model(path), "CPU", {
      "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
      "INFERENCE_NUM_THREADS": threads})
  request = compiled.create_infer_request()
  return lambda x: np.array(request.infer({0: x})[0])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import onnxruntime  # pylint: disable=import-outside-toplevel
  import openvino  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from kpsem_jax import convert, export  # pylint: disable=import-outside-toplevel
  from kpsem_jax.inference import predictor  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import create_model, normalize  # pylint: disable=import-outside-toplevel
  from kpsem_jax.testing import torch_kpsem, torch_mfnet  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(FLAGS.threads)
  print(f"JAX {jax.__version__}, torch {torch.__version__}, ONNX Runtime "
        f"{onnxruntime.__version__}, OpenVINO {openvino.__version__}; {FLAGS.threads} threads "
        f"each; medians of {FLAGS.repeats} interleaved runs")
  tmp = tempfile.mkdtemp()
  net = torch_mfnet.randomize(torch_mfnet.MFNET_3D(num_classes=400)).eval()
  torch.save(net.state_dict(), os.path.join(tmp, "mfnet.pth"))
  quiet = lambda *a: None  # noqa: E731
  convert.run(os.path.join(tmp, "mfnet.pth"), os.path.join(tmp, "mfnet3d"), log=quiet)
  convert.run(os.path.join(tmp, "mfnet.pth"), os.path.join(tmp, "mf_kpsem"), model="mf_kpsem",
              log=quiet)
  kp_params = jax.device_get(checkpoint.load_variables(os.path.join(tmp, "mf_kpsem"))[0]["params"])
  net_kpsem = torch_kpsem.MF_KPSEM(kp_params["kpsem"], kp_params["classifier"], num_classes=400)
  net_kpsem.load_state_dict({k: v for k, v in net.state_dict().items()
                             if not k.startswith("classifier.")}, strict=False)
  torch_nets = {"mfnet3d": net, "mf_kpsem": net_kpsem.eval()}

  def jax_forward(name, precision="float32"):
    variables, meta = checkpoint.load_variables(os.path.join(tmp, name))
    model = create_model(**meta["model"], conv_strategy="auto")
    if precision == "bfloat16":  # as Predictor(precision="bfloat16") runs it
      variables = predictor.bfloat16_variables(variables)
      fn = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.bfloat16)).astype(jnp.float32))
    else:
      fn = jax.jit(lambda v, x: model.apply(v, x))
    return lambda x: np.asarray(jax.block_until_ready(fn(variables, x)))

  print(f"\n{'model':9s} {'B':>2s} {'runtime':13s} {'time s':>7s} {'jax/it':>6s} "
        f"{'max diff':>9s}  (max diff: logits vs eager PyTorch, relative to the largest)")
  for name in FLAGS.models:
    forward_jax = jax_forward(name)
    forward_bf16 = jax_forward(name, "bfloat16") if FLAGS.openvino_bf16 else None
    for b in (int(v) for v in FLAGS.batches):
      clips = np.random.RandomState(b).randint(0, 256, (b, 16, 224, 224, 3)).astype(np.uint8)
      x = np.asarray(normalize(clips))
      xt = np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))  # (B, 3, T, H, W)
      path = os.path.join(tmp, f"{name}_b{b}.onnx")
      runtimes = {"kpsem-jax": lambda: forward_jax(x)}
      if forward_bf16 is not None:
        runtimes["kpsem-jax bf16"] = lambda: forward_bf16(x)
      with torch.no_grad():
        ref = torch_nets[name](torch.from_numpy(xt)).numpy()
      runtimes["torch eager"] = lambda: torch_nets[name](torch.from_numpy(xt)).numpy()
      try:
        exporter = export_onnx(torch, torch_nets[name], b, path)
        session, ov_model = (onnxruntime_session(path, FLAGS.threads),
                             openvino_model(path, FLAGS.threads))
        runtimes["onnxruntime"] = lambda: session(xt)
        runtimes["openvino f32"] = lambda: ov_model(xt)
        if FLAGS.openvino_bf16:
          ov_bf16 = openvino_model(path, FLAGS.threads, "bf16")
          runtimes["openvino bf16"] = lambda: ov_bf16(xt)
      except Exception as e:  # pylint: disable=broad-except
        exporter = None
        print(f"{name}: ONNX export or load failed, peers skipped: "
              f"{' '.join(str(e).split())[:300]}")
      if FLAGS.own_onnx:
        own = os.path.join(tmp, f"{name}_b{b}_ours.onnx")
        with open(own, "wb") as f:
          f.write(export.export_onnx(os.path.join(tmp, name), b)[0].SerializeToString())
        own_ort, own_ov = onnxruntime_session(own, FLAGS.threads), openvino_model(own, FLAGS.threads)
        runtimes["ort (ours)"] = lambda: own_ort(clips)
        runtimes["openvino (ours)"] = lambda: own_ov(clips)
      with torch.no_grad():
        for fn in runtimes.values():
          fn()  # compile / warm up
      times = {k: [] for k in runtimes}
      outs = {}
      for _ in range(FLAGS.repeats):
        for k, fn in runtimes.items():
          with torch.no_grad():
            t, outs[k] = timed(fn)
          times[k].append(t)
      med = {k: float(np.median(v)) for k, v in times.items()}
      for k in runtimes:
        diff = np.abs(np.asarray(outs[k]) - ref).max() / np.abs(ref).max()
        print(f"{name:9s} {b:2d} {k:13s} {med[k]:7.3f} {med['kpsem-jax'] / med[k]:6.2f} "
              f"{diff:9.1e}")
      if exporter:
        print(f"{'':9s} {'':2s} (ONNX by torch.onnx.export, {exporter} exporter)")


if __name__ == "__main__":
  app.run(main)
