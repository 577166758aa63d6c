"""Classify videos from the command line.

    python -m kpsem_jax.predict --checkpoint=DIR VIDEO_OR_FOLDER [...] [--json] [--top_k=5]
        [--timeline [--timeline_stride=SECONDS]]

DIR is a training workdir (its best checkpoint, else its latest) or a converted checkpoint.
Each video is cut into the evaluation views of the checkpoint's config (clips x crops; a
converted checkpoint gets MFNet's 10 x 3 at 16x224x224), run in fixed-size batches through
one compiled function, and its softmax averaged. A folder stands for the video files in it
(recursively). A video that cannot be read is reported and the others still run; the exit
status is 1 if any failed. ``--timeline`` adds one prediction per sliding window (the
evaluation clip, moved by ``--timeline_stride`` seconds; by default by one window, so no part
of the video is left out) across the whole video, decoded as a stream so a long video never
sits in memory; a stride longer than a window says how much it leaves unseen.
"""

import json
import os
import stat
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional

from kpsem_jax.data import video
from kpsem_jax.host import printable

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv")


def expand(paths: Iterable[str]) -> List[str]:
  """Files as given; folders replaced by the video files under them, sorted."""
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names if name.lower().endswith(VIDEO_EXTENSIONS))
      if not found:
        print(f"warning: {path} holds no video files ({', '.join(VIDEO_EXTENSIONS)})",
              file=sys.stderr)
      out.extend(found)
    else:
      out.append(path)
  return out


def run(checkpoint: str, paths: Iterable[str], top_k: int = 5, batch_size: int = 8,
        num_clips: Optional[int] = None, num_crops: Optional[int] = None,
        log=print, timeline_stride: Optional[float] = None,
        allow_truncated: bool = False,
        on_result: Optional[Callable[[Dict], None]] = None,
        memory_limit_gb: float = 0.0, precision: str = "float32") -> List[Dict]:
  """One result per video: ``{"video", "top": [{"label", "probability"}], "views"}`` or
  ``{"video", "error"}``; with ``timeline_stride`` (seconds) also ``"timeline"``, one entry
  per window (``Predictor.timeline``). ``log`` gets the timing lines. A truncated video
  (decoding ends well short of the frames its container promises) is an error unless
  ``allow_truncated``: then what decodes is classified. Each result's ``video`` is the name as
  given, shown as valid UTF-8 (``\\xNN`` for bytes that are not); ``on_result`` gets each
  result as soon as it is made. ``precision``: ``Predictor``'s (``float32`` or
  ``bfloat16``)."""
  from kpsem_jax.inference.predictor import load_predictor  # pylint: disable=import-outside-toplevel
  videos = expand(paths)
  # Inputs are checked before anything is compiled: a name that is not a readable regular
  # file (missing, a folder of no videos, a FIFO or device) is its result at once.
  unusable = {path: why for path, why in ((p, not_a_video_file(p)) for p in videos) if why}
  results = []

  def add(result):  # its names made printable, then passed on at once
    result = dict(result, video=printable(result["video"]))
    if "error" in result:
      result["error"] = printable(result["error"])
    results.append(result)
    if on_result is not None:
      on_result(result)
  if len(unusable) == len(videos):
    log(f"none of the {len(videos)} inputs is a readable file; nothing was classified")
    for path in videos:
      add({"video": path, "error": unusable[path]})
    return results
  predictor = load_predictor(checkpoint, precision=precision)
  changes = {k: v for k, v in (("num_clips", num_clips), ("num_crops", num_crops)) if v}
  spec = predictor.with_spec(**changes)
  views_per_video = spec.num_clips * spec.num_crops
  batch = min(batch_size, views_per_video)
  t = time.perf_counter()
  predictor.compile(batch, spec, memory_limit_gb)  # DoesNotFit names a batch that fits
  log(f"{checkpoint}: {len(predictor.class_names)} classes, {views_per_video} views per video "
      f"({spec.num_clips} clips x {spec.num_crops} crops of {spec.frames}x{spec.crop}x"
      f"{spec.crop}), batches of {batch}; compiled in {time.perf_counter() - t:.1f} s")
  model_time, views_done, decode_time = 0.0, 0, 0.0
  for path in videos:
    if path in unusable:
      add({"video": path, "error": unusable[path]})
      continue
    t = time.perf_counter()
    try:
      views = predictor.views(path, spec, allow_truncated)
    except video.TruncatedVideoError as e:
      add({"video": path, "error": f"{e}; --allow_truncated classifies the frames that "
           "decode"})
      continue
    except (video.VideoError, OSError) as e:
      add({"video": path, "error": _without_path(str(e), path)})
      continue
    t1 = time.perf_counter()
    probs = predictor.probabilities(views, batch)
    decode_time += t1 - t
    model_time += time.perf_counter() - t1
    views_done += len(views)
    result = {"video": path, "views": len(views), "top": [
        {"label": label, "probability": p} for label, p in predictor.top(probs, top_k)]}
    if timeline_stride is not None:
      try:
        windows = predictor.timeline(path, timeline_stride or None, top_k,
                                     batch_size=batch_size)
        result["timeline"] = windows
        gaps = [b["start"] - a["end"] for a, b in zip(windows, windows[1:])]
        if gaps and max(gaps) > 1e-9:
          log(f"note: {path}: windows are {windows[0]['end'] - windows[0]['start']:.2f} s "
              f"long and start {timeline_stride:g} s apart: {max(gaps):.2f} s after each "
              "window is never looked at (--timeline_stride=0: one window apart)")
      except (video.VideoError, OSError) as e:
        result = {"video": path, "error": _without_path(str(e), path)}
    add(result)
  ok = sum("top" in r for r in results)
  rate = f"{views_done / model_time:.2f} clips/s" if model_time else "no clips"
  log(f"{ok} of {len(results)} videos classified: {views_done} clips through the model in "
      f"{model_time:.1f} s ({rate}); decoding and cropping took {decode_time:.1f} s")
  return results


def not_a_video_file(path: str) -> Optional[str]:
  """Why ``path`` cannot be read as a video file (missing, not a regular file, unreadable),
  or None."""
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    return f"cannot be read ({e.strerror})"
  if not stat.S_ISREG(mode):
    return "not a regular file (a folder, FIFO or device): skipped"
  if not os.access(path, os.R_OK):
    return "cannot be read (permission denied)"
  return None


def _without_path(message: str, path: str) -> str:
  """``message`` without a leading ``path: `` (the result already names the file)."""
  return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def format_text(results: List[Dict]) -> str:
  """The text output of ``results``: a block of lines a video."""
  lines = []
  for r in results:
    if "error" in r:
      lines.append(f"{r['video']}: FAILED: {r['error']}")
      continue
    lines.append(f"{r['video']}:")
    lines.extend(f"  {t['probability']:7.4f}  {t['label']}" for t in r["top"])
    if "timeline" in r:
      lines.append("  timeline (seconds, top label):")
      lines.extend(f"  {w['start']:8.2f}-{w['end']:<8.2f} {w['top'][0]['label']}  "
                   f"{w['top'][0]['probability']:.4f}" for w in r["timeline"])
  return "\n".join(lines)


def define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("checkpoint", None, "a training workdir or a converted checkpoint folder")
  flags.DEFINE_integer("top_k", 5, "labels to print per video")
  flags.DEFINE_bool("json", False, "print one JSON document (a list of per-video results)")
  flags.DEFINE_integer("batch_size", 8, "views per forward pass")
  flags.DEFINE_integer("num_clips", None, "override the checkpoint's clips per video")
  flags.DEFINE_integer("num_crops", None, "override the checkpoint's crops per clip")
  flags.DEFINE_bool("timeline", False, "also predict per sliding window across each video")
  flags.DEFINE_float("timeline_stride", 0.0, "seconds between --timeline windows (0: one "
                     "window, so consecutive windows leave no gap)")
  flags.DEFINE_bool("allow_truncated", False, "classify what decodes of a video that ends "
                    "well short of the frames its container promises (default: an error)")
  flags.DEFINE_float("memory_limit_gb", 0.0, "a device's memory budget for the forward pass "
                     "(0: what it has); a --batch_size over it is refused naming one that fits")
  flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "bfloat16: the backbone "
                    "in bf16, where the CPU has bf16 units (avx512_bf16, AMX) or on a GPU; "
                    "docs/speed.md gives its agreement with float32")
  flags.mark_flag_as_required("checkpoint")


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli
  FLAGS = flags.FLAGS
  if len(argv) < 2:
    raise app.UsageError("name at least one video file or folder")
  if not os.path.isdir(FLAGS.checkpoint):
    cli.fail(f"--checkpoint={FLAGS.checkpoint} is not a folder")
  for name in ("top_k", "batch_size", "num_clips", "num_crops"):
    value = getattr(FLAGS, name)
    if value is not None and value < 1:
      cli.fail(f"--{name}={value}: must be at least 1")
  if not FLAGS.timeline_stride >= 0 or FLAGS.timeline_stride == float("inf"):  # nan, inf, < 0
    cli.fail(f"--timeline_stride={FLAGS.timeline_stride}: must be a finite number of "
             "seconds, 0 or more (0: one window)")
  if FLAGS.precision == "bfloat16":
    from kpsem_jax.inference.predictor import has_bf16_units  # pylint: disable=import-outside-toplevel
    if not has_bf16_units():
      cli.fail("--precision=bfloat16 needs bf16 units (a GPU, or a CPU with avx512_bf16 or "
               "amx_bf16); this CPU has none: use --precision=float32")
  log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
  try:
    from kpsem_jax.train import memory_fit  # pylint: disable=import-outside-toplevel
    with cli.one_line_errors(checkpoint.CheckpointError, memory_fit.DoesNotFit,
                             doing=f"predicting with {FLAGS.checkpoint}"):
      # the text of each video as soon as it is classified (nothing is lost to a later one)
      stream = None if FLAGS.json else (lambda r: print(format_text([r]), flush=True))
      results = run(FLAGS.checkpoint, argv[1:], FLAGS.top_k, FLAGS.batch_size,
                    FLAGS.num_clips, FLAGS.num_crops, log=log,
                    timeline_stride=FLAGS.timeline_stride if FLAGS.timeline else None,
                    allow_truncated=FLAGS.allow_truncated, on_result=stream,
                    memory_limit_gb=FLAGS.memory_limit_gb, precision=FLAGS.precision)
  except FileNotFoundError as e:
    cli.fail(str(e))
  if FLAGS.json:
    print(json.dumps(results, indent=1))
  failed = [r for r in results if "error" in r]
  if failed:
    log(f"failed: {len(failed)} of {len(results)} videos ("
        f"{'their errors are in the JSON' if FLAGS.json else 'FAILED lines above'})")
  return 1 if failed or not results else 0


if __name__ == "__main__":
  from kpsem_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)
