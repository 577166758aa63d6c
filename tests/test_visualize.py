"""``python -m kpsem_jax.visualize``: picture sizes, arrow directions, Grad-CAM values."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from kpsem_jax import visualize
from kpsem_jax.inference.predictor import load_predictor
from kpsem_jax.models import arese
from kpsem_jax.models.classifier import normalize
from kpsem_jax.testing import tiny_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEO = os.path.join(REPO, "..", "shared", "fixtures", "videos", "ucf101_style_BabyCrawling.avi")


def blob_clip(velocity, frames=4, size=16, start=(6, 4)):
  """A 3x3 square with a brighter centre moving ``velocity`` = (dx, dy) pixels per frame."""
  clip = np.zeros((frames, size, size), np.float32)
  for t in range(frames):
    x, y = start[0] + t * velocity[0], start[1] + t * velocity[1]
    clip[t, y - 1:y + 2, x - 1:x + 2] = 0.5
    clip[t, y, x] = 1.0
  return clip


@pytest.mark.parametrize("velocity,num_regions", [((2, 0), 1), ((0, 2), 1), ((0, -1), 1), ((-1, 1), 4)])
def test_the_drawn_arrow_points_the_way_the_blob_moves(velocity, num_regions):
  clip = blob_clip(velocity)
  k = arese.grid_size(num_regions)
  out = arese.arese(jnp.asarray(clip[..., None]), jnp.zeros((4, 2, k - 1)), temperature=0.0)
  # The blob's region (row-major: it stays in the top-left quarter for K = 4).
  channels = np.zeros((num_regions, 1), int)
  size = 128
  arrows = visualize.shift_arrows(np.asarray(out.coords), np.asarray(out.shifts), channels,
                                  size)
  frames = (np.repeat(clip[..., None], 3, -1) * 100).astype(np.uint8)  # dim grey blob
  panels = visualize.keypoint_panels(frames[:-1], [a for a in arrows if a["region"] == 0], size)
  color = np.array(visualize.COLORS[0])
  for t, image in enumerate(panels):
    pixels = np.argwhere(np.all(np.asarray(image) == color, axis=-1))[:, ::-1]  # (x, y)
    assert len(pixels) > 10
    start = np.array([a["start"] for a in arrows if a["t"] == t and a["region"] == 0][0])
    # The key point sits on the blob, in panel pixels (8 per map pixel).
    x, y = 6 + t * velocity[0], 4 + t * velocity[1]
    np.testing.assert_allclose(start, [(x + 0.5) * 8, (y + 0.5) * 8], atol=1e-3)
    drawn = pixels.mean(axis=0) - start  # the ring is centred on start; the arrow pulls
    for axis in (0, 1):
      if velocity[axis]:
        assert np.sign(drawn[axis]) == np.sign(velocity[axis]), (t, drawn)
        assert abs(drawn[axis]) > 2
      else:
        assert abs(drawn[axis]) < 1.5, (t, drawn)


def test_grad_cam_equals_the_class_activation_map_of_a_pooled_linear_head(tmp_path):
  # With global average pooling and a linear classifier, d logit_c / d A is the class's
  # weight column over the map size, so Grad-CAM = relu(A . w_c), normalised.
  model, variables = tiny_models.save_tiny_checkpoint(tmp_path / "ckpt")
  clip = (np.random.RandomState(0).rand(8, 64, 64, 3) * 255).astype(np.uint8)
  last = model.apply(variables, normalize(clip[None]), method="stages")["last"][0]
  assert last.shape == (4, 2, 2, 32)
  nonzero = 0
  for cls in range(len(tiny_models.CLASSES)):
    cam = visualize.grad_cam(model, variables, clip, cls)
    w = variables["params"]["classifier"]["kernel"][:last.shape[-1], cls]
    ref = np.maximum(np.einsum("thwc,c->thw", np.asarray(last), np.asarray(w)), 0)
    assert cam.shape == (4, 2, 2)
    np.testing.assert_allclose(cam, ref / max(ref.max(), 1e-30), rtol=1e-4, atol=1e-6)
    nonzero += ref.max() > 0
  assert nonzero >= 2  # the comparison is not only between empty maps


@pytest.mark.slow
def test_cli_writes_every_picture_at_the_expected_size(tmp_path):
  if not os.path.exists(VIDEO):
    pytest.skip(f"{VIDEO} not found (../shared beside the repo)")
  tiny_models.save_tiny_checkpoint(tmp_path / "kpsem", kpsem=True)
  tiny_models.save_tiny_checkpoint(tmp_path / "plain", kpsem=False, seed=1)
  out = tmp_path / "pictures"
  run = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.visualize", f"--checkpoint={tmp_path / 'kpsem'}",
       f"--baseline={tmp_path / 'plain'}", f"--out={out}", "--size=64", "--channels=3",
       "--set=1", VIDEO], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.load(open(out / "summary.json"))
  # 8 input frames -> 4 feature frames at conv3 -> 3 shifts; 4 regions x 3 channels each.
  assert summary["set"] == 1 and summary["regions"] == 4
  assert len(summary["arrows"]) == 3 * 4 * 3
  assert summary["clip_frames_drawn"] == [1, 3, 5, 7]
  def caption_lines(name, width, panels_height):  # the caption band's wrapped lines
    size = Image.open(out / name).size
    assert size[0] == width and (size[1] - panels_height - 4) % visualize.LINE_HEIGHT == 0
    return (size[1] - panels_height - 4) // visualize.LINE_HEIGHT
  assert caption_lines("keypoints.png", 3 * 64 + 2 * 2, 64) >= 3
  gif = Image.open(out / "keypoints.gif")
  assert gif.size == (64, 64) and gif.n_frames == 3
  assert caption_lines("splits.png", 4 * 64 + 3 * 2, 64) >= 3
  cam_frames = summary["gradcam"]["model"]["frames"]
  assert summary["gradcam"]["baseline"]["frames"] == cam_frames == 4
  assert caption_lines("gradcam.png", 4 * 64 + 3 * 2, 2 * 64 + 2) >= 3  # 2 models
  band = 4 + visualize.LINE_HEIGHT * caption_lines("splits.png", 4 * 64 + 3 * 2, 64)
  # The pictures say what they show: the prediction, the legend, the untrained lines.
  top = summary["top"][0]
  said = f"predicted: {top['label']} (p={top['probability']:.2f}); AReSE set 1 of 2"
  texts = {name: Image.open(out / name).text["Description"].splitlines()
           for name in ("keypoints.png", "splits.png", "gradcam.png")}
  assert all(lines[0] == said for lines in texts.values())
  assert texts["keypoints.png"][2].startswith("regions 0: rgb(230, 25, 75), 1: rgb(60, 180, 75)")
  assert texts["splits.png"][2].startswith("the split lines never left their start")
  assert texts["gradcam.png"][1] == (
      f"rows: model, Grad-CAM of its prediction {summary['gradcam']['model']['class_name']}; "
      f"baseline, Grad-CAM of its prediction {summary['gradcam']['baseline']['class_name']}")
  # The caption band holds dark text pixels; the panels start below it.
  caption = np.asarray(Image.open(out / "splits.png"))[:band]
  assert (caption.sum(-1) < 200).sum() > 50
  predictor = load_predictor(str(tmp_path / "kpsem"))
  assert summary["predicted"] == summary["top"][0]["label"]
  assert summary["predicted"] in predictor.class_names
  # An untrained checkpoint: its split MLPs' last layers are zero, the lines at the centre.
  assert summary["split_lines"]["never_left_start"]
  assert summary["split_lines"]["largest_from_start_px"] == pytest.approx(0.0, abs=1e-5)
  assert "the split lines never left their start" in run.stdout

  plain = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.visualize", f"--checkpoint={tmp_path / 'plain'}",
       f"--out={tmp_path / 'x'}", VIDEO], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert plain.returncode == 1 and "no KPSEM branch" in plain.stderr
  assert "Traceback" not in plain.stderr


def test_an_out_that_is_a_file_is_one_line_before_any_work(tmp_path):
  (tmp_path / "file").write_text("x")
  run = subprocess.run(
      [sys.executable, "-m", "kpsem_jax.visualize", f"--checkpoint={tmp_path / 'nothing'}",
       f"--out={tmp_path / 'file'}", "x.mp4"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert run.returncode == 1 and run.stderr.strip() == (
      f"error: drawing into {tmp_path / 'file'}: {tmp_path / 'file'}: File exists; a file "
      "stands where a folder is to be made")
