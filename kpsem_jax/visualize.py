"""Pictures of what a model saw: key point shifts, region split lines, Grad-CAM.

  python -m kpsem_jax.visualize --checkpoint=DIR VIDEO --out=DIR [--baseline=DIR]

Writes into ``--out``:

- ``keypoints.png`` / ``keypoints.gif``: for one AReSE set, the key points of the strongest
 channels of each region (largest regional weight ``W_R``) on every feature frame, and
 their shifts ``S`` (Eq. 10) as arrows to the next frame, one colour per region (the
 paper's Figure 10);
- ``splits.png``: the set's adaptive split lines on every feature frame;
- ``gradcam.png``: Grad-CAM of the last conv layer for the predicted class on each of its
 frames (Figure 9); a second row for ``--baseline`` (e.g. the plain backbone);
- ``summary.json``: the predicted classes, the set and channels drawn, and every arrow in
 pixels.

Each PNG has a caption band above its panels (the predicted class and its probability, the
set, a legend of what is drawn, and a note when the split lines never left their start, as
in an untrained checkpoint), the same lines in its ``Description`` text chunk, and every
panel names its clip frame (``t=3``).

The clip is the video's centre clip and centre crop under the checkpoint's evaluation
settings. Feature frame ``t`` is drawn on the clip frame at the centre of its window.
"""

import json
import os
import textwrap
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

# One colour per region (up to 16 regions), distinct on photographs.
COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
          (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
          (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
          (170, 255, 195)]


# ---- model outputs --------------------------------------------------------------------
def arese_of(model, variables, clip: np.ndarray):
  """Logits ``(num_classes,)`` and the AReSE outputs of every set, leading axis ``G``.

  ``clip``: uint8 ``(T, S, S, 3)``."""
  from kpsem_jax.models.classifier import normalize  # pylint: disable=import-outside-toplevel
  logits, state = model.apply(variables, normalize(clip[None]), mutable=["intermediates"])
  if "kpsem" not in state.get("intermediates", {}):
    raise ValueError("this model has no KPSEM branch: there are no key points to draw")
  outputs = state["intermediates"]["kpsem"]["arese"][0]
  return np.asarray(logits[0]), jax.tree.map(lambda a: np.asarray(a[:, 0]), outputs)


def grad_cam(model, variables, clip: np.ndarray, class_index: int) -> np.ndarray:
  """Grad-CAM ``(T', H', W')`` in [0, 1] of the backbone's last activation map.

  Channel weights are the mean gradient of the ``class_index`` logit over the map's
  positions; the map is ``relu(sum_c weight_c * A_c)``, divided by its maximum."""
  from kpsem_jax.models.classifier import normalize  # pylint: disable=import-outside-toplevel
  stages = model.apply(variables, normalize(clip[None]), method="stages")

  def logit(last):
    changed = dict(stages, last=last, pooled=jnp.mean(last, axis=(1, 2, 3)))
    v_out = model.apply(variables, changed, method="combine")
    return model.apply(variables, v_out, method="classify")[0, class_index]

  grads = jax.grad(logit)(stages["last"])[0]  # (T', H', W', C)
  weights = grads.mean(axis=(0, 1, 2))
  cam = np.asarray(jax.nn.relu(jnp.einsum("thwc,c->thw", stages["last"][0], weights)))
  return cam / cam.max() if cam.max() > 0 else cam


# ---- geometry ---------------------------------------------------------------------------
def frame_of(feature_frames: int, clip_frames: int) -> np.ndarray:
  """Clip frame at the centre of each feature frame's temporal window ``(T',)``."""
  return np.minimum(((np.arange(feature_frames) + 0.5) * clip_frames / feature_frames)
                    .astype(int), clip_frames - 1)


def to_pixels(xy: np.ndarray, size: int) -> np.ndarray:
  """Normalised ``(..., 2)`` coordinates in [-1, 1] -> pixels of a ``size`` x ``size`` panel."""
  return (np.asarray(xy) + 1.0) / 2.0 * size


def strongest_channels(region_weights: np.ndarray, count: int) -> np.ndarray:
  """``(K, count)`` channels with the largest time-averaged ``W_R`` per region.

  ``region_weights``: ``(T-1, K, C)``."""
  return np.argsort(-region_weights.mean(axis=0), axis=-1, kind="stable")[:, :count]


def shift_arrows(coords: np.ndarray, shifts: np.ndarray, channels: np.ndarray, size: int,
                 scale: float = 1.0) -> List[Dict]:
  """One arrow per (transition t, region, drawn channel): from the key point on frame t
  along its shift ``S`` (times ``scale``), in panel pixels.

  ``coords`` ``(T, K, C, 2)``, ``shifts`` ``(T-1, K, C, 2)``, ``channels`` ``(K, n)``."""
  arrows = []
  for t in range(shifts.shape[0]):
    for region, chans in enumerate(channels):
      for c in chans:
        start = to_pixels(coords[t, region, c], size)
        end = start + scale * np.asarray(shifts[t, region, c]) / 2.0 * size
        arrows.append(dict(t=t, region=region, channel=int(c),
                           start=[float(v) for v in start], end=[float(v) for v in end]))
  return arrows


# ---- drawing ----------------------------------------------------------------------------
def panel(frame: np.ndarray, size: int) -> Image.Image:
  """An RGB frame scaled to ``size`` x ``size`` (nearest pixels, so it stays sharp)."""
  return Image.fromarray(frame).resize((size, size), Image.NEAREST)


def draw_arrow(draw: ImageDraw.ImageDraw, start, end, color, width: int = 2):
  start, end = np.asarray(start, float), np.asarray(end, float)
  r = width + 1
  draw.ellipse([start[0] - r, start[1] - r, start[0] + r, start[1] + r], outline=color,
               width=1)
  draw.line([tuple(start), tuple(end)], fill=color, width=width)
  d = end - start
  length = float(np.hypot(*d))
  if length < 1e-6:
    return
  unit, normal = d / length, np.array([-d[1], d[0]]) / length
  head = min(6.0, 0.5 * length + 2)
  for side in (1, -1):
    draw.line([tuple(end), tuple(end - head * unit + side * 0.6 * head * normal)],
              fill=color, width=width)


def keypoint_panels(frames: np.ndarray, arrows: Sequence[Dict], size: int) -> List[Image.Image]:
  """One panel per transition: frame t with its arrows, coloured by region."""
  panels = []
  for t in range(len(frames)):
    image = panel(frames[t], size)
    draw = ImageDraw.Draw(image)
    for a in arrows:
      if a["t"] == t:
        draw_arrow(draw, a["start"], a["end"], COLORS[a["region"] % len(COLORS)])
    panels.append(image)
  return panels


def split_panels(frames: np.ndarray, splits_x: np.ndarray, splits_y: np.ndarray,
                 size: int) -> List[Image.Image]:
  """Frames with the split lines ``(T, k-1)`` per axis drawn across them."""
  panels = []
  for t in range(len(frames)):
    image = panel(frames[t], size)
    draw = ImageDraw.Draw(image)
    for x in to_pixels(splits_x[t], size):
      draw.line([(x, 0), (x, size)], fill=(255, 255, 0), width=2)
    for y in to_pixels(splits_y[t], size):
      draw.line([(0, y), (size, y)], fill=(0, 255, 255), width=2)
    panels.append(image)
  return panels


def heat_panels(frames: np.ndarray, cam: np.ndarray, size: int) -> List[Image.Image]:
  """Frames blended with a black-red-yellow-white heat map of ``cam`` ``(T, h, w)``."""
  panels = []
  for t in range(len(frames)):
    heat = np.asarray(Image.fromarray((cam[t] * 255).astype(np.uint8))
                      .resize((size, size), Image.BILINEAR), np.float32) / 255.0
    color = np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1),
                      np.clip(3 * heat - 2, 0, 1)], -1) * 255
    base = np.asarray(panel(frames[t], size), np.float32)
    panels.append(Image.fromarray((0.5 * base + 0.5 * color).astype(np.uint8)))
  return panels


def label_frames(panels: Sequence[Image.Image], indices: Sequence[int]) -> List[Image.Image]:
  """Each panel with its clip frame index (``t=3``) in its top-left corner."""
  for image, t in zip(panels, indices):
    draw = ImageDraw.Draw(image)
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # a dark outline, readable on any frame
      draw.text((3 + dx, 1 + dy), f"t={t}", fill=(0, 0, 0))
    draw.text((3, 1), f"t={t}", fill=(255, 255, 255))
  return list(panels)


LINE_HEIGHT = 12  # PIL's default font, with spacing


def save_captioned(image: Image.Image, lines: Sequence[str], path: str) -> None:
  """``image`` under a white band holding ``lines`` (the prediction, a legend), saved as a
  PNG whose ``Description`` text chunk holds the same lines."""
  # wrapped to the picture's width (the default font is about 6 pixels a character)
  shown = [part for line in lines for part in textwrap.wrap(line, max(16, image.width // 6))]
  band = 4 + LINE_HEIGHT * len(shown)
  out = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
  out.paste(image, (0, band))
  draw = ImageDraw.Draw(out)
  for i, line in enumerate(shown):
    draw.text((2, 2 + LINE_HEIGHT * i), line, fill=(0, 0, 0))
  info = PngImagePlugin.PngInfo()
  info.add_text("Description", "\n".join(lines))
  out.save(path, pnginfo=info)


def grid(rows: Sequence[Sequence[Image.Image]], gap: int = 2) -> Image.Image:
  """Panels of equal size in rows, ``gap`` white pixels apart."""
  w, h = rows[0][0].size
  cols = max(len(r) for r in rows)
  out = Image.new("RGB", (cols * w + (cols - 1) * gap, len(rows) * h + (len(rows) - 1) * gap),
                  (255, 255, 255))
  for i, row in enumerate(rows):
    for j, p in enumerate(row):
      out.paste(p, (j * (w + gap), i * (h + gap)))
  return out


def save_gif(panels: Sequence[Image.Image], path: str, ms_per_frame: int = 400):
  panels[0].save(path, save_all=True, append_images=list(panels[1:]), duration=ms_per_frame,
                 loop=0)


# ---- the command ------------------------------------------------------------------------
def run(checkpoint: str, video_path: str, out: str, baseline: str = "", set_index: int = 0,
        channels: int = 2, size: int = 224, arrow_scale: float = 1.0) -> Dict:
  """Draws the pictures for one video; returns the summary also written as JSON."""
  from kpsem_jax.inference.predictor import load_predictor  # pylint: disable=import-outside-toplevel
  predictor = load_predictor(checkpoint)
  spec = predictor.with_spec(num_clips=1, num_crops=1)
  clip = predictor.views(video_path, spec)[0]  # (T, S, S, 3) uint8
  logits, sets = arese_of(predictor.model, predictor.variables, clip)
  num_sets = sets.coords.shape[0]
  if not 0 <= set_index < num_sets:
    raise ValueError(f"--set={set_index}, but the model has {num_sets} AReSE sets")
  one = jax.tree.map(lambda a: a[set_index], sets)
  feature_frames = one.coords.shape[0]
  frames = clip[frame_of(feature_frames, len(clip))]
  chosen = strongest_channels(one.region_weights, channels)
  arrows = shift_arrows(one.coords, one.shifts, chosen, size, arrow_scale)
  os.makedirs(out, exist_ok=True)
  drawn = [int(i) for i in frame_of(feature_frames, len(clip))]
  predicted = int(np.argmax(logits))
  probs = np.asarray(jax.nn.softmax(logits))
  said = (f"predicted: {predictor.class_names[predicted]} (p={probs[predicted]:.2f}); "
          f"AReSE set {set_index} of {num_sets}")
  from kpsem_jax.experiments import split_movement  # pylint: disable=import-outside-toplevel
  from kpsem_jax.models.classifier import normalize  # pylint: disable=import-outside-toplevel
  map_size = predictor.model.apply(predictor.variables, normalize(clip[None]),
                                   method="stages")[predictor.model.kpsem_at].shape[2:4]
  moved = split_movement.movement(sets.splits_x[:, None], sets.splits_y[:, None],
                                  int(map_size[1]), int(map_size[0]))
  never_moved = bool(moved["largest_from_start"] < 0.05)
  panels = label_frames(keypoint_panels(frames[:-1], arrows, size), drawn[:-1])
  region_colours = ", ".join(f"{r}: rgb{COLORS[r % len(COLORS)]}"
                             for r in range(int(one.coords.shape[1])))
  save_captioned(grid([panels]), [
      said, f"arrows: key point shifts to the next frame, {channels} strongest channels a "
            "region, coloured by region", f"regions {region_colours}"],
      os.path.join(out, "keypoints.png"))
  save_gif(panels, os.path.join(out, "keypoints.gif"))
  save_captioned(
      grid([label_frames(split_panels(frames, one.splits_x, one.splits_y, size), drawn)]),
      [said, "yellow: the split lines across x; cyan: across y (the regions' borders)"]
      + (["the split lines never left their start (the centre): an untrained checkpoint?"]
         if never_moved else []), os.path.join(out, "splits.png"))

  rows, models = [], [("model", predictor)]
  if baseline:
    models.append(("baseline", load_predictor(baseline)))
  cams = {}
  for name, p in models:
    cls = int(np.argmax(np.asarray(p.uint8_logits(clip[None]))[0]))
    cam = grad_cam(p.model, p.variables, clip, cls)
    cams[name] = dict(class_name=p.class_names[cls], frames=int(cam.shape[0]))
    cam_frames = frame_of(cam.shape[0], len(clip))
    rows.append(label_frames(heat_panels(clip[cam_frames], cam, size), cam_frames))
  save_captioned(grid(rows), [
      said, "rows: " + "; ".join(f"{name}, Grad-CAM of its prediction "
                                 f"{cams[name]['class_name']}" for name, _ in models),
      "heat: black (none) -> red -> yellow -> white (the most)"],
      os.path.join(out, "gradcam.png"))

  summary = dict(
      video=video_path, checkpoint=checkpoint,
      top=[dict(label=predictor.class_names[i], probability=float(probs[i]))
           for i in np.argsort(-probs)[:5]],
      predicted=predictor.class_names[predicted], set=set_index, num_sets=num_sets,
      regions=int(one.coords.shape[1]), channels={str(r): [int(c) for c in cs]
                                                  for r, cs in enumerate(chosen)},
      clip_frames_drawn=drawn,
      panel_size=size, gradcam=cams, arrows=arrows,
      split_lines=dict(moved_from_start_px=moved["from_start"],
                       largest_from_start_px=moved["largest_from_start"],
                       never_left_start=never_moved))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("checkpoint", None, "an MF-KPSEM training workdir or converted checkpoint")
  flags.DEFINE_string("out", None, "folder for the pictures")
  flags.DEFINE_string("baseline", "", "optional second checkpoint (e.g. the plain backbone) "
                      "for a Grad-CAM row of its own")
  flags.DEFINE_integer("set", 0, "which AReSE set to draw")
  flags.DEFINE_integer("channels", 2, "strongest channels drawn per region")
  flags.DEFINE_integer("size", 224, "panel size in pixels")
  flags.DEFINE_float("arrow_scale", 1.0, "arrows are the shift times this")
  flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from kpsem_jax.data import video  # pylint: disable=import-outside-toplevel
  from kpsem_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from kpsem_jax import cli
  FLAGS = flags.FLAGS
  if len(argv) != 2:
    raise app.UsageError("name exactly one video file")
  with cli.one_line_errors(video.VideoError, FileNotFoundError, ValueError,
                           checkpoint.CheckpointError, doing=f"drawing into {FLAGS.out}"):
    from kpsem_jax import atomic  # pylint: disable=import-outside-toplevel
    os.makedirs(FLAGS.out, exist_ok=True)  # the pictures' folder: writable, before the work
    atomic.check_writable(FLAGS.out)
    summary = run(FLAGS.checkpoint, argv[1], FLAGS.out, FLAGS.baseline, FLAGS.set,
                  FLAGS.channels, FLAGS.size, FLAGS.arrow_scale)
  print(f"{summary['video']}: predicted {summary['predicted']}; pictures in {FLAGS.out} "
        "(keypoints.png, keypoints.gif, splits.png, gradcam.png, summary.json)")
  lines = summary["split_lines"]
  if lines["never_left_start"]:
    print("note: the split lines never left their start (the equal split): an untrained "
          "checkpoint, fixed regions, or one trained with match_gradient='stopped'")
  else:
    print(f"split lines: {lines['moved_from_start_px']:.2f} feature-map pixels from their "
          f"start on average (largest {lines['largest_from_start_px']:.2f})")
  return 0


if __name__ == "__main__":
  from kpsem_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, define_flags)
