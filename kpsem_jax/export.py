"""A checkpoint's predictor as one file that runs without this project: a ``jax.export``
artifact, or an ONNX model for ONNX Runtime, OpenVINO and the stacks that serve ONNX.

    python -m kpsem_jax.export --checkpoint=DIR --output=FILE [--batch=1] [--format=jax|onnx]

Input: uint8 RGB clips ``(batch, T, crop, crop, 3)`` with the checkpoint's evaluation frames
and crop; output: float32 logits ``(batch, num_classes)``; MFNet's normalisation is inside.
Load and run it with JAX alone::

    exported = jax.export.deserialize(bytearray(open(FILE, "rb").read()))
    logits = exported.call(clips)

``--format=onnx`` writes the same function as an ONNX model (opset 17; input ``clips``,
output ``logits``; the class names, JSON, in its metadata under ``class_names``), lowered
from its jaxpr by :mod:`kpsem_jax.inference.onnx_lowering` (needs the ``onnx`` package)::

    session = onnxruntime.InferenceSession(FILE)
    logits = session.run(None, {"clips": clips})[0]

The jax artifact is lowered for CPU and CUDA. Both are pure XLA: the model is built with
``conv_strategy="xla"`` (AReSE's argmax in ``jnp``), because the CPU kernels of
:mod:`kpsem_jax.models.cpu_kernels` are custom calls that exist only where this project built them.
The weights are constants inside the artifact. Beside it, ``FILE.json`` names the classes
(``class_names``, in the logits' order) and the input it takes. Both files are written to
temporary names and renamed, so an interrupted export leaves nothing half-written; an
existing ``FILE`` is replaced only with ``--overwrite``.
"""

import importlib.util
import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from kpsem_jax import atomic
from kpsem_jax.inference import onnx_lowering
from kpsem_jax.inference.predictor import clip_spec_of
from kpsem_jax.models.classifier import create_model, normalize
from kpsem_jax.train import checkpoint

PLATFORMS = ("cpu", "cuda")


def export_predictor(checkpoint_dir: str, batch: int = 1,
                     platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """The predictor of ``checkpoint_dir`` (a workdir's best checkpoint, else its latest, or a
  converted checkpoint) for ``batch`` clips, exported for ``platforms``."""
  return export_checkpoint(checkpoint_dir, batch, platforms)[0]


def logits_function(checkpoint_dir: str, batch: int = 1
                    ) -> Tuple[Callable, jax.ShapeDtypeStruct, Dict[str, Any]]:
  """``(clips -> float32 logits, the clips' shape and dtype, the checkpoint's metadata)``:
  the predictor's function in pure XLA, its weights closed over."""
  variables, metadata = checkpoint.load_variables(checkpoint_dir, prefer_best=True)
  spec = clip_spec_of(metadata)
  model = create_model(**metadata["model"], conv_strategy="xla")

  def logits(clips):
    return model.apply(variables, normalize(clips), train=False).astype(jnp.float32)

  clips = jax.ShapeDtypeStruct((batch, spec.frames, spec.crop, spec.crop, 3), jnp.uint8)
  return logits, clips, metadata


def export_checkpoint(checkpoint_dir: str, batch: int = 1,
                      platforms: Sequence[str] = PLATFORMS
                      ) -> Tuple[jax.export.Exported, Dict[str, Any]]:
  """``(exported predictor, the checkpoint's metadata)``, the checkpoint read once."""
  logits, clips, metadata = logits_function(checkpoint_dir, batch)
  return jax.export.export(jax.jit(logits), platforms=tuple(platforms))(clips), metadata


def export_onnx(checkpoint_dir: str, batch: int = 1):
  """``(onnx.ModelProto, the checkpoint's metadata)``: input ``clips`` (uint8, the
  checkpoint's evaluation frames and crop), output ``logits``; the class names (JSON) in the
  model's ``metadata_props`` as ``class_names``."""
  logits, clips, metadata = logits_function(checkpoint_dir, batch)
  names = metadata.get("class_names") or [f"class_{i}" for i in
                                           range(metadata["model"]["num_classes"])]
  return onnx_lowering.to_onnx(
      logits, [clips], ["clips"], ["logits"],
      metadata={"class_names": json.dumps(list(names)),
                "input": "uint8 RGB clips (batch, frames, height, width, 3)",
                "output": "logits, one per class in class_names' order"}), metadata


def write(exported: jax.export.Exported, output: str,
          class_names: Optional[Sequence[str]] = None) -> None:
  """Writes the serialized artifact to ``output`` whole (permissions follow the umask) and,
  given ``class_names``, ``output + ".json"``: the class names and the input's shape."""
  if class_names is not None:
    shape = exported.in_avals[0]
    atomic.write_text(output + ".json", json.dumps(
        {"class_names": list(class_names), "input": {"shape": list(shape.shape),
                                                      "dtype": str(shape.dtype)},
         "output": "logits, one per class in class_names' order"}, indent=1) + "\n")
  atomic.write_bytes(output, exported.serialize())


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  output = os.path.abspath(FLAGS.output)
  if os.path.isdir(output) or not os.path.isdir(os.path.dirname(output)):
    cli.fail(f"--output={FLAGS.output}: not a file path in an existing folder")
  if FLAGS.batch < 1:
    cli.fail(f"--batch={FLAGS.batch}: must be at least 1")
  if os.path.exists(output) and not FLAGS.overwrite:
    cli.fail(f"--output={FLAGS.output} exists: pass --overwrite to replace it")
  if FLAGS.format == "onnx":
    return _main_onnx(output)
  with cli.one_line_errors(FileNotFoundError, checkpoint.CheckpointError,
                           doing=f"exporting {FLAGS.checkpoint}"):
    exported, metadata = export_checkpoint(FLAGS.checkpoint, FLAGS.batch)
  names = metadata.get("class_names")
  try:
    write(exported, output, names)
  except OSError as e:
    cli.fail(f"writing {output}: {e.strerror or e}")
  shape = exported.in_avals[0]
  print(f"{output}: uint8 clips {tuple(shape.shape)} -> logits "
        f"{tuple(exported.out_avals[0].shape)}, for {', '.join(exported.platforms)}"
        + (f"; class names in {output}.json" if names else ""))
  return 0


def _main_onnx(output: str) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli  # pylint: disable=import-outside-toplevel
  FLAGS = flags.FLAGS
  if importlib.util.find_spec("onnx") is None:
    cli.fail("--format=onnx needs the onnx package: pip install onnx==1.23.2 "
             "(requirements.txt pins it)")
  with cli.one_line_errors(FileNotFoundError, checkpoint.CheckpointError,
                           onnx_lowering.LoweringError, doing=f"exporting {FLAGS.checkpoint}"):
    model, _ = export_onnx(FLAGS.checkpoint, FLAGS.batch)
  try:
    atomic.write_bytes(output, model.SerializeToString())
  except OSError as e:
    cli.fail(f"writing {output}: {e.strerror or e}")
  shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
  classes = len(json.loads(dict((p.key, p.value) for p in model.metadata_props)["class_names"]))
  print(f"{output}: ONNX (opset {onnx_lowering.OPSET}), uint8 clips {tuple(shape)} -> logits "
        f"({shape[0]}, {classes}); class names in its metadata (class_names)")
  return 0


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("checkpoint", None, "a training workdir or a converted checkpoint folder")
  flags.DEFINE_string("output", None, "the file to write (the serialized jax.export artifact, "
                      "or with --format=onnx the ONNX model)")
  flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax: a jax.export artifact (+ FILE.json);"
                    " onnx: an ONNX model carrying the class names")
  flags.DEFINE_integer("batch", 1, "clips per call (the artifact's fixed batch size)")
  flags.DEFINE_bool("overwrite", False, "replace an existing --output")
  flags.mark_flags_as_required(["checkpoint", "output"])


if __name__ == "__main__":
  from kpsem_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)
