"""Convert an original PyTorch MFNet checkpoint into a kpsem-jax checkpoint.

    python -m kpsem_jax.convert --pytorch=MFNet3D_Kinetics-400_72.8.pth --output=DIR \\
        [--num_classes=N] [--model=mfnet3d|mf_kpsem] [--allow_partial] [--inflate_2d]

Reads PyTorch's legacy (pre-1.6) and zip formats, a bare ``state_dict`` or one under
``'state_dict'``, keys with or without ``module.``, with or without ``num_batches_tracked``.
The network's widths, depths and groups are read off the tensors, so narrow MFNets convert
too. Reading ``.pth`` files needs PyTorch (``pip install torch==2.13.0``, the CPU build); the
unpickling is PyTorch's ``weights_only`` mode, which loads tensors and plain containers only.
"""

import hashlib
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import flags
import jax
import jax.numpy as jnp
from flax import traverse_util
import numpy as np

from kpsem_jax import cli
from kpsem_jax.inference import porting
from kpsem_jax.models.classifier import create_model
from kpsem_jax.models.mfnet3d import STAGES
from kpsem_jax.train import checkpoint



class ConversionError(Exception):
  """A problem with the input checkpoint, explained in one paragraph."""


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 numpy arrays, keys normalised.

  Unwraps ``{'state_dict': ...}``, strips ``module.``, drops ``num_batches_tracked``.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file.")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(
        f"reading {path} needs PyTorch, which is not installed. Install the CPU build with "
        "'pip install torch==2.13.0' (it is only needed for the conversion).") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    # PyTorch's advice to retry with weights_only=False is unsafe and of no use for bytes
    # that are not a checkpoint: give its own diagnosis (e.g. "Unsupported operand 80").
    detail = [l for l in lines if "weights_only" not in l and "WeightsUnpickler" not in l
              and not l.startswith(("Please file", "Check the documentation"))]
    reason = detail[0] if detail else (lines[0] if lines else type(e).__name__)
    if "weights_only" in reason:
      reason = "its contents are not a pickled state_dict"
    raise ConversionError(
        f"{path} is not a readable PyTorch checkpoint: it may be truncated (an interrupted "
        f"download) or not a .pth file at all. PyTorch said: {type(e).__name__}: {reason}"
    ) from None
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping "
                          "from parameter names to tensors).")
  tensors = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      continue
    key = str(key)
    key = key[len("module."):] if key.startswith("module.") else key
    if key.endswith("num_batches_tracked"):
      continue
    tensors[key] = value.detach().to(torch.float32).numpy()
  if not tensors:
    raise ConversionError(f"{path} holds no tensors: it is not a model checkpoint.")
  return tensors


def infer_mfnet(tensors: Mapping[str, np.ndarray], path: str) -> Tuple[Dict[str, Any], int]:
  """``(backbone_kwargs, num_classes)`` of the MFNet the tensors belong to."""
  needed = ["conv1.conv.weight", "classifier.weight", "conv2.B01.conv_m1.conv.weight"]
  needed += [f"{s}.B01.conv_m2.conv.weight" for s in STAGES]
  missing = [k for k in needed if k not in tensors]
  if missing:
    sample = ", ".join(sorted(tensors)[:5])
    raise ConversionError(
        f"{path} is not an MFNet checkpoint: it lacks {', '.join(missing)} (its first keys "
        f"are {sample}, ...). Only the original MFNet-3D/2D layout can be converted.")
  conv1 = tensors["conv1.conv.weight"].shape[0]
  depths = []
  for stage in STAGES:
    units = {m.group(1) for k in tensors for m in [re.match(rf"{stage}\.(B\d\d)\.", k)] if m}
    depths.append(len(units))
  channels = [int(tensors[f"{s}.B01.conv_m2.conv.weight"].shape[0]) for s in STAGES]
  groups = conv1 // int(tensors["conv2.B01.conv_m1.conv.weight"].shape[1])
  kwargs = dict(conv1_channels=int(conv1), stage_channels=channels, stage_depths=depths,
                groups=int(groups))
  return kwargs, int(tensors["classifier.weight"].shape[0])


def inflate(value: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  """A 2-D kernel ``(O, I, kh, kw)`` as 3-D ``(O, I, kt, kh, kw)``: repeated, divided by kt."""
  kt = target_shape[2]
  return np.repeat(value[:, :, None], kt, axis=2) / kt


def convert(tensors: Mapping[str, np.ndarray], template: Mapping, num_classes: int,
            checkpoint_classes: int, with_kpsem: bool, inflate_2d: bool):
  """Maps PyTorch tensors onto the Flax ``template`` (abstract variables).

  Returns ``(flat, report)``: ``flat`` maps ``(collection, path)`` to converted arrays;
  ``report`` lists converted keys, keys to initialise fresh, and missing / unexpected /
  mismatched keys.
  """
  expected = porting.expected_torch_keys(template)
  flat_template = {c: traverse_util.flatten_dict(template.get(c, {})) for c in ("params", "batch_stats")}
  fresh_classifier = with_kpsem or num_classes != checkpoint_classes
  classifier_keys = {"classifier.weight", "classifier.bias"}
  report = {"converted": [], "initialised": [], "missing": [], "unexpected": [],
            "mismatched": [], "inflated": 0}
  flat = {}
  for key, (collection, path) in sorted(expected.items()):
    if fresh_classifier and key in classifier_keys:
      report["initialised"].append(key)
      continue
    if key not in tensors:
      report["missing"].append(key)
      continue
    want = tuple(flat_template[collection][path].shape)
    value = tensors[key]
    if inflate_2d and value.ndim == 4 and len(want) == 5:
      value = inflate(value, tuple(porting.flax_to_torch_array(path, np.zeros(want)).shape))
      report["inflated"] += 1
    value = porting.torch_to_flax_array(path, value)
    if value.shape != want:
      report["mismatched"].append(
          f"{key}: checkpoint {tuple(tensors[key].shape)}, model expects "
          f"{porting.flax_to_torch_array(path, np.zeros(want)).shape}")
      continue
    flat[(collection, path)] = value
    report["converted"].append(key)
  report["unexpected"] = sorted(k for k in tensors
                                if k not in expected and not (fresh_classifier and k in classifier_keys))
  return flat, report


def problems(report) -> str:
  lines = []
  for kind in ("missing", "unexpected", "mismatched"):
    if report[kind]:
      lines.append(f"{len(report[kind])} {kind}: " + "; ".join(report[kind]))
  return "\n".join(lines)


def run(pytorch: str, output: str, num_classes: Optional[int] = None, model: str = "mfnet3d",
        allow_partial: bool = False, inflate_2d: bool = False, frames: int = 16,
        overwrite: bool = False, seed: int = 0, log=print) -> Dict[str, Any]:
  """The conversion; raises :class:`ConversionError` before writing anything on bad input."""
  if model not in ("mfnet3d", "mf_kpsem"):
    raise ConversionError(f"--model must be mfnet3d or mf_kpsem, not {model!r}.")
  if os.path.exists(output) and not os.path.isdir(output):
    raise ConversionError(f"--output={output} is a file, not a folder; choose another path.")
  if os.path.exists(output) and os.listdir(output) and not overwrite:
    raise ConversionError(f"{output} exists and is not empty; pass --overwrite to replace it.")
  log(f"[1/4] reading {pytorch}")
  tensors = read_state_dict(pytorch)
  backbone_kwargs, checkpoint_classes = infer_mfnet(tensors, pytorch)
  num_classes = num_classes or checkpoint_classes
  spec = dict(backbone="mfnet3d", num_classes=num_classes, backbone_kwargs=backbone_kwargs,
              kpsem={} if model == "mf_kpsem" else None, kpsem_at="conv4")
  log(f"      {len(tensors)} tensors; MFNet with conv1 {backbone_kwargs['conv1_channels']}, "
      f"stages {backbone_kwargs['stage_channels']} x {backbone_kwargs['stage_depths']}, "
      f"groups {backbone_kwargs['groups']}, {checkpoint_classes} classes")

  log(f"[2/4] mapping onto {model} ({num_classes} classes)")
  net = create_model(**spec)
  # Parameter shapes depend on the frame count (KPSEM's classifier input), not on H, W.
  dummy = jnp.zeros((1, frames, 32, 32, 3), jnp.float32)
  template = jax.eval_shape(net.init, jax.random.PRNGKey(seed), dummy)
  flat, report = convert(tensors, template, num_classes, checkpoint_classes,
                         model == "mf_kpsem", inflate_2d)
  issues = problems(report)
  if issues and not allow_partial:
    raise ConversionError(
        f"{pytorch} does not match the {model} model key for key (pass --allow_partial to "
        f"convert what matches and initialise the rest):\n{issues}")
  if issues:
    log("      --allow_partial: these are initialised fresh or ignored:\n" + issues)
  if num_classes != checkpoint_classes:
    log(f"      the checkpoint has {checkpoint_classes} classes, the model {num_classes}: "
        "the classifier is initialised fresh (fine-tuning)")
  if model == "mf_kpsem":
    log("      the KPSEM branch and the classifier (768 + KPSEM inputs) are initialised fresh")
  if report["inflated"]:
    log(f"      inflated {report['inflated']} 2-D kernels to 3-D (repeated over time, / kt)")

  log("[3/4] assembling variables")
  if len(flat) < sum(len(traverse_util.flatten_dict(template[c])) for c in template):
    fresh = jax.jit(net.init)(jax.random.PRNGKey(seed), dummy)
  else:
    fresh = template
  variables = {}
  for collection in template:
    leaves = traverse_util.flatten_dict(fresh[collection])
    leaves = {p: np.asarray(flat.get((collection, p), v)) for p, v in leaves.items()}
    variables[collection] = traverse_util.unflatten_dict(leaves)

  n_params = sum(v.size for v in traverse_util.flatten_dict(variables["params"]).values())
  metadata = checkpoint.make_metadata(
      spec, frames, class_names=None, source=os.path.abspath(pytorch),
      source_sha256=sha256(pytorch), converted=len(report["converted"]),
      initialised=report["initialised"] + report["missing"] + report["mismatched"]
      + (["kpsem"] if model == "mf_kpsem" else []),
      inflated_2d=report["inflated"], parameters=int(n_params),
      converted_paths=sorted("/".join((c,) + p) for c, p in flat))
  log(f"[4/4] writing {output}")
  checkpoint.save_variables(output, variables, metadata, overwrite=overwrite)
  log(f"done: {len(report['converted'])} tensors converted, {n_params:,d} parameters, "
      f"{num_classes} classes -> {output}")
  return metadata


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.pytorch or not FLAGS.output:
    print("usage: python -m kpsem_jax.convert --pytorch=PATH.pth --output=DIR", file=sys.stderr)
    sys.exit(2)
  try:
    with cli.one_line_errors(ConversionError):
      run(FLAGS.pytorch, FLAGS.output, FLAGS.num_classes, FLAGS.model, FLAGS.allow_partial,
          FLAGS.inflate_2d, FLAGS.frames, FLAGS.overwrite)
  except OSError as e:  # disk full, no permission: nothing half-written stays behind
    cli.fail(f"writing {FLAGS.output}: {e.strerror or e}")


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("pytorch", None, "the PyTorch MFNet checkpoint (.pth)")
  flags.DEFINE_string("output", None, "folder for the kpsem-jax checkpoint")
  flags.DEFINE_integer("num_classes", None, "classes of the new model (default: the checkpoint's)")
  flags.DEFINE_enum("model", "mfnet3d", ["mfnet3d", "mf_kpsem"], "the network to build")
  flags.DEFINE_bool("allow_partial", False, "convert what matches, initialise the rest")
  flags.DEFINE_bool("inflate_2d", False, "inflate a 2-D (ImageNet) MFNet's kernels to 3-D")
  flags.DEFINE_integer("frames", 16, "frames per clip the model will see (sizes KPSEM's output)")
  flags.DEFINE_bool("overwrite", False, "replace an existing output folder")


if __name__ == "__main__":
  cli.run(main, define_flags)
