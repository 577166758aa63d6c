"""bfloat16 inference against float32 on a trained run's test split: do they agree?

    .venv/bin/python benchmarks/bf16_agreement.py --workdir=WORKDIR [--videos=0]

Loads the workdir's checkpoint twice (``load_predictor(precision=...)``), opens its config's
evaluation split through ``datasets.open_dataset`` and classifies every video (``--videos``:
the first that many; 0: all) with its evaluation views in both precisions. Prints the share
of videos whose top-1 label is the same, the logits' relative error (largest absolute
difference over the largest absolute float32 logit, per view: median and largest), and
both precisions' video top-1. Needs a CPU with bf16 units (or a GPU).
"""

import json
import os

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "a training workdir (its best checkpoint, else latest)")
flags.DEFINE_integer("videos", 0, "the first this many videos of the split (0: all)")


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()
  import ml_collections  # pylint: disable=import-outside-toplevel
  from kpsem_jax.data import clips as clips_lib  # pylint: disable=import-outside-toplevel
  from kpsem_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from kpsem_jax.inference.predictor import load_predictor  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(json.load(open(os.path.join(FLAGS.workdir, "config.json"))))
  names, _, source = datasets.open_dataset(config.dataset)
  p32 = load_predictor(FLAGS.workdir)
  p16 = load_predictor(FLAGS.workdir, precision="bfloat16")
  count = len(source) if not FLAGS.videos else min(FLAGS.videos, len(source))
  same, right32, right16, errors = 0, 0, 0, []
  for i in range(count):
    video = source[i]
    views = clips_lib.eval_views(video, p32.clip_spec)
    la, lb = p32.uint8_logits(views), p16.uint8_logits(views)  # (views, classes)
    errors += list(np.abs(la - lb).max(-1) / np.abs(la).max(-1))
    top32, top16 = int(softmax(la).mean(0).argmax()), int(softmax(lb).mean(0).argmax())
    same += top32 == top16
    right32 += top32 == video.label
    right16 += top16 == video.label
  print(f"{FLAGS.workdir}: {count} videos of {config.dataset.name} {config.dataset.config} "
        f"({len(names)} classes), {p32.clip_spec.num_clips}x{p32.clip_spec.num_crops} views")
  print(f"same top-1 label: {same}/{count} ({100 * same / count:.1f}%); logits' relative "
        f"error per view: median {np.median(errors):.1e}, largest {np.max(errors):.1e}")
  print(f"video top-1: float32 {100 * right32 / count:.1f}%, bfloat16 {100 * right16 / count:.1f}%")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
