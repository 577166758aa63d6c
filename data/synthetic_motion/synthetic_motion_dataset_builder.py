"""synthetic_motion: procedurally generated clips whose class is their motion alone.

A textured object moves over a cluttered, textured background that drifts in a random
direction of its own. Classes come in time-reversed pairs drawn from the same path
distribution, so every single frame, and every frame-order-blind summary of a clip, carries
no information about the label: only the order of frames does. Deterministic from the
config's seed. Configs: ``default`` (right/left, down/up, clockwise/anticlockwise,
approach/recede), ``translation`` (translations in 8 directions: right/left, down/up and the
two diagonals), ``translation_hard``, ``key_object_<n>`` (a small striped key object among
``n`` plain distractors of its size, each moving in a random direction of its own, over a
slow background; 1024 test videos; ``key_object_<n>_<m>`` with ``m`` training videos a
class), ``key_object_striped_8_<m>`` (the distractors striped as the key object is, only
its hue tells it apart), ``key_object_wrap_<s>`` (``key_object_4`` wrapping around the
edges, spans of ``s/100`` frame sizes and more a clip), ``key_object_wrap_mix`` and
``key_object_wrap_far30`` (spans mixed), ``key_object_faint_<a>`` (``key_object_wrap_150``
whose key object is drawn at an opacity between 0 and ``a/100``, per video),
``key_object_faint_test_<a>`` (the same opacities in the test split only), ``tiny`` (``default``'s classes, small, for tests).
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from kpsem_jax.data import video_builder

CLASSES = ("move_right", "move_left", "move_down", "move_up", "rotate_clockwise",
           "rotate_anticlockwise", "approach", "recede")
TRANSLATION_CLASSES = ("move_right", "move_left", "move_down", "move_up", "move_down_right",
                       "move_up_left", "move_down_left", "move_up_right")
# Each pair's first class: its path; the second class is the same path reversed in time.
# A translation's unit direction in image coordinates (x right, y down).
_DIRECTIONS = {"move_right": (1.0, 0.0), "move_down": (0.0, 1.0),
               "move_down_right": (0.5 ** 0.5, 0.5 ** 0.5),
               "move_down_left": (-0.5 ** 0.5, 0.5 ** 0.5)}


@dataclasses.dataclass
class SyntheticMotionConfig(tfds.core.BuilderConfig):
  size: int = 64  # frame height and width
  frames: int = 16
  train_per_class: int = 64
  test_per_class: int = 16
  seed: int = 0
  classes: tuple = CLASSES  # in time-reversed pairs (2k, 2k+1)
  span: tuple = (0.25, 0.45)  # a translation's whole-clip displacement, in frame sizes
  drift: float = 0.02  # the background's largest motion a frame along each axis, in frame sizes
  radius: tuple = (10, 7)  # the object's radius: between size / radius[0] and size / radius[1]
  distractors: int = 0  # plain discs of the object's size, each on a random straight path
  striped_distractors: bool = False  # distractors striped like the key object; hue tells apart
  wrap: bool = False  # translations wrap around the frame's edges (a torus): any span fits
  far: float = 0.0  # the share of videos whose key object's span is drawn from far_span
  far_span: tuple = (2.2, 2.4)
  faint: float = 0.0  # > 0: each video's key object opacity is drawn from [0, faint]
  faint_test: float = 0.0  # > 0: so in the test split only (training videos stay opaque)


def _texture(rng, height, width, channels=3):
  """Smooth random colour field plus random rectangles (clutter), float in [0, 1]."""
  coarse = rng.random((height // 8 + 2, width // 8 + 2, channels))
  field = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
  for _ in range(max(4, height * width // 300)):
    y, x = rng.integers(0, height), rng.integers(0, width)
    h, w = rng.integers(2, max(3, height // 6)), rng.integers(2, max(3, width // 6))
    field[y:y + h, x:x + w] = rng.random(channels)
  return field


def _path(rng, classes, label, frames, size, span_range=(0.25, 0.45), radius_range=(10, 7),
          wrap=False, far=0.0, far_span=(2.2, 2.4)):
  """Per-frame object centre (x, y) and radius of class ``classes[label]``. For the same
  draws, the path of class 2k+1 is exactly the time reversal of the path of class 2k. With
  ``wrap`` a translation leaves one edge and comes back at the opposite one (coordinates
  modulo ``size``), so a span may exceed the frame; with ``far`` > 0, that share of
  translations draws its span from ``far_span`` instead (the draw does not depend on the
  class)."""
  t = np.arange(frames, dtype=np.float64)
  radius = np.full(frames, rng.uniform(size / radius_range[0], size / radius_range[1]))
  motion, reverse = classes[label - label % 2], label % 2
  if motion in _DIRECTIONS:  # translation: a path centred anywhere it fits
    if far > 0 and rng.uniform() < far:
      span_range = far_span
    span = rng.uniform(*span_range) * size  # whole-clip displacement, any frame count
    if wrap:
      centre = rng.uniform(0, size, size=2)
    else:
      centre = rng.uniform(radius[0] + span / 2, size - radius[0] - span / 2, size=2)
    offset = (t / (frames - 1) - 0.5) * span
    dx, dy = _DIRECTIONS[motion]
    x, y = centre[0] + offset * dx, centre[1] + offset * dy
    if wrap:
      x, y = x % size, y % size
  elif motion == "rotate_clockwise":  # about a random centre; image y points down
    orbit = rng.uniform(size / 6, size / 4)
    centre = rng.uniform(orbit + radius[0], size - orbit - radius[0], size=2)
    sweep = rng.uniform(0.5, 1.0) * np.pi  # a quarter to a half turn per clip
    angle = rng.uniform(0, 2 * np.pi) + t / (frames - 1) * sweep
    x, y = centre[0] + orbit * np.cos(angle), centre[1] + orbit * np.sin(angle)
  elif motion == "approach":  # radius a -> 2a
    small = rng.uniform(size / 14, size / 9)
    radius = small * np.linspace(1.0, 2.0, frames)
    centre = rng.uniform(2 * small, size - 2 * small, size=2)
    x, y = np.full(frames, centre[0]), np.full(frames, centre[1])
  else:
    raise ValueError(f"synthetic_motion: no path for class {motion!r}")
  if reverse:  # left, up, anticlockwise, recede, ...
    x, y, radius = x[::-1], y[::-1], radius[::-1]
  return x, y, radius


def background_offsets(drift: np.ndarray, frames: int, pad: int) -> np.ndarray:
  """``(frames, 2)`` top-left corners (y, x) of each frame's window into the background,
  padded by ``pad``: the drift path centred on the clip's middle frame, so the offsets of
  drift ``-d`` are exactly those of ``d`` in reverse order, and a clip played backwards is
  exactly a clip of its time-reversed class (with the background drifting the other way,
  as likely a draw)."""
  t = np.arange(frames) - (frames - 1) / 2
  return (pad + np.round(np.asarray(drift)[None, :] * t[:, None])).astype(int)


def _distractor_paths(rng, count, frames, size, radius, span_range, wrap=False):
  """``count`` straight paths ``(x, y)`` of ``(frames,)`` each, in uniformly random
  directions (so a path's time reversal is as likely a draw), as long as the object's
  (``wrap``: modulo ``size``, as the object's)."""
  paths = []
  t = np.arange(frames, dtype=np.float64) / (frames - 1) - 0.5
  for _ in range(count):
    angle = rng.uniform(0, 2 * np.pi)
    span = rng.uniform(*span_range) * size
    if wrap:
      centre = rng.uniform(0, size, size=2)
    else:
      centre = rng.uniform(radius + span / 2, size - radius - span / 2, size=2)
    x, y = centre[0] + t * span * np.cos(angle), centre[1] + t * span * np.sin(angle)
    paths.append((x % size, y % size) if wrap else (x, y))
  return paths


def _distance(xx, yy, x, y, size, wrap):
  """Each pixel's distance to ``(x, y)``, on a torus of side ``size`` when ``wrap``."""
  dx, dy = xx - x, yy - y
  if wrap:
    dx, dy = (dx + size / 2) % size - size / 2, (dy + size / 2) % size - size / 2
  return np.hypot(dx, dy)


def _stripes(rng, size):
  """``(size, size)`` bool stripes at a random angle and frequency."""
  angle = rng.uniform(0, np.pi)
  yy, xx = np.mgrid[0:size, 0:size]
  return np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.8, 1.6)) > 0


def render(label: int, size: int, frames: int, rng: np.random.Generator,
           classes=CLASSES, span=(0.25, 0.45), drift=0.02, radius=(10, 7),
           distractors: int = 0, striped_distractors: bool = False,
           wrap: bool = False, far: float = 0.0, far_span=(2.2, 2.4),
           opacity: float = 1.0) -> np.ndarray:
  """``(frames, size, size, 3)`` uint8 clip of class ``classes[label]``, its key object
  blended over the rest at ``opacity`` (1: opaque; no draw depends on it); with
  ``distractors``, that many discs of the object's size cross the frame too (drawn after
  every other draw, so the clips without them are unchanged): plain, or with
  ``striped_distractors`` striped as the key object is, so that only its hue tells it apart
  (the key object red-orange, each distractor a hue without red); ``wrap``: every disc
  crosses the frame's edges onto the opposite side (:func:`_path`)."""
  drift = rng.uniform(-drift, drift, size=2) * size  # background motion, class-independent
  pad = int(np.ceil(np.abs(drift).max() * frames)) + 1
  background = 0.2 + 0.5 * _texture(rng, size + 2 * pad, size + 2 * pad)  # muted clutter
  yy, xx = np.mgrid[0:size, 0:size]
  stripes = _stripes(rng, size)
  colour = rng.uniform(0.6, 1.0, size=3)
  x, y, radius = _path(rng, classes, label, frames, size, span, radius, wrap, far, far_span)
  clip = np.empty((frames, size, size, 3), np.uint8)
  offsets = background_offsets(drift, frames, pad)
  others = [(path, rng.uniform(0.3, 1.0, size=3))
            for path in _distractor_paths(rng, distractors, frames, size, radius[0], span, wrap)]
  if striped_distractors:
    others = [(path, np.where(_stripes(rng, size)[..., None], hue, 0.05 * hue))
              for (path, _), hue in zip(others, _hues_without_red(rng, len(others)))]
    colour = np.array([rng.uniform(0.8, 1.0), rng.uniform(0.15, 0.45), rng.uniform(0.0, 0.2)])
  texture = np.where(stripes[..., None], colour, 0.05 * colour)  # high-contrast stripes
  for i in range(frames):
    oy, ox = offsets[i]
    frame = background[oy:oy + size, ox:ox + size]
    for (px, py), look in others:  # discs (a colour or a striped texture), under the key object
      disc = 1.0 / (1.0 + np.exp(_distance(xx, yy, px[i], py[i], size, wrap) - radius[i]))
      frame = frame * (1 - disc[..., None]) + look * disc[..., None]
    inside = opacity / (1.0 + np.exp(_distance(xx, yy, x[i], y[i], size, wrap) - radius[i]))
    frame = frame * (1 - inside[..., None]) + texture * inside[..., None]
    frame = frame + rng.normal(0, 0.02, frame.shape)
    clip[i] = np.clip(frame * 255, 0, 255).astype(np.uint8)
  return clip


def _hues_without_red(rng, count):
  """``(count, 3)`` colours whose red is the weakest channel (greens, cyans, blues)."""
  return np.array([[rng.uniform(0.0, 0.3), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0)]
                   for _ in range(count)]).reshape(count, 3)


def faint_of(config: SyntheticMotionConfig, split: str) -> float:
  """The largest key-object opacity videos of ``split`` draw from (0: opaque, no draw)."""
  return config.faint_test if split == "test" and config.faint_test else config.faint


def key_object_opacity(seed: int, split_id: int, i: int, faint: float) -> float:
  """Video ``i``'s key object opacity: 1 without ``faint``, else uniform in [0, faint]
  from a stream of its own, so it can be recomputed without rendering."""
  if faint <= 0:
    return 1.0
  return float(np.random.default_rng([seed, split_id, i, 1]).uniform(0.0, faint))


class Builder(video_builder.VideoDatasetBuilder):
  """Synthetic motion-defined action classes (no download)."""

  NEEDS_SOURCE = False  # generated, no download

  VERSION = tfds.core.Version("2.1.0")
  RELEASE_NOTES = dict(video_builder.RELEASE_NOTES, **{
      "1.0.0": "First release (the translation config added later: the default config's "
               "clips are unchanged).",
      "2.1.0": "The background's drift path is centred on the middle frame (it started at "
               "frame 0): a clip played backwards is exactly a clip of the reversed class."})
  BUILDER_CONFIGS = [
      SyntheticMotionConfig(name="default", description="8 classes, 64x64, 16 frames, 512/128"),
      # 15 frames: 8 at interval 2 take frames 0, 2, .., 14, a set that time reversal maps
      # onto itself, so a clip and its reversal show the same object positions.
      SyntheticMotionConfig(name="translation",
                            description="8 translation directions, 64x64, 15 frames, 2048/128",
                            classes=TRANSLATION_CLASSES, span=(0.5, 0.7), frames=15,
                            train_per_class=256),
      # The same directions, a smaller object (radius 4-5.3 px) over a background whose
      # drift (camera motion) is 3x larger, up to 3.8 px a frame along each axis, as fast as
      # the object's own motion: order-aware backbones do not saturate (docs/experiments.md).
      SyntheticMotionConfig(name="translation_hard",
                            description="translation, a smaller object, 3x the camera "
                                        "motion, 64x64, 15 frames, 2048/128",
                            classes=TRANSLATION_CLASSES, span=(0.5, 0.7), frames=15,
                            train_per_class=256, drift=0.06, radius=(16, 12)),
      # The sets for MFNet vs MF-KPSEM, 96x96 (MFNet's conv4, stride 16, is 6x6): a
      # small striped key object (radius 6-8 px) crossing half to 0.7 of the frame (3.4-4.8
      # px a frame) among n plain distractors of its size on random straight paths, over a
      # slow background (0.48 px a frame at most); 1024 test videos. n is calibrated on
      # MFNet alone (docs/experiments.md).
      *[SyntheticMotionConfig(name=f"key_object_{n}",
                              description=f"a small key object among {n} distractors, "
                                          "8 directions, 96x96, 15 frames, 2048/1024",
                              size=96, classes=TRANSLATION_CLASSES, span=(0.5, 0.7),
                              frames=15, train_per_class=256, test_per_class=128,
                              drift=0.005, radius=(16, 12), distractors=n)
        for n in (0, 1, 2, 4, 8)],
      # The same with m training videos per class (key_object_<n>_<m>), the scarcity of
      # the paper's small datasets (HMDB51: about 70 a class).
      *[SyntheticMotionConfig(name=f"key_object_{n}_{m}",
                              description=f"key_object_{n} with {m} training videos a class, "
                                          f"96x96, 15 frames, {8 * m}/1024",
                              size=96, classes=TRANSLATION_CLASSES, span=(0.5, 0.7),
                              frames=15, train_per_class=m, test_per_class=128,
                              drift=0.005, radius=(16, 12), distractors=n)
        for n in (4, 8) for m in (16, 32)],
      # Distractors striped as the key object is (only its hue, red-orange, tells it
      # apart), with m training videos a class.
      *[SyntheticMotionConfig(name=f"key_object_striped_{n}_{m}",
                              description=f"a small key object among {n} striped distractors "
                                          f"of other hues, {m} training videos a class, "
                                          f"96x96, 15 frames, {8 * m}/1024",
                              size=96, classes=TRANSLATION_CLASSES, span=(0.5, 0.7),
                              frames=15, train_per_class=m, test_per_class=128,
                              drift=0.005, radius=(16, 12), distractors=n,
                              striped_distractors=True)
        for n in (8,) for m in (4, 8, 16, 32, 64)],
      # key_object_4 whose discs cross the frame's edges (wrap around) and travel s/100
      # frame sizes a clip (s/100 to s/100 + 0.2): 8 sampled frames see jumps of
      # 96 s / 700 pixels and more, beyond MFNet's kernels' reach on its small maps.
      *[SyntheticMotionConfig(name=f"key_object_wrap_{s}",
                              description=f"key_object_4, wrapping around, spans of "
                                          f"{s / 100:g}-{s / 100 + 0.2:g} frames, 96x96, "
                                          "15 frames, 2048/1024",
                              size=96, classes=TRANSLATION_CLASSES,
                              span=(s / 100, s / 100 + 0.2), frames=15, train_per_class=256,
                              test_per_class=128, drift=0.005, radius=(16, 12), distractors=4,
                              wrap=True)
        for s in (75, 100, 150, 165, 175, 200, 250, 300)],
      # Spans from 1.2 to 2.2 frames in one set: jumps MFNet follows (at 1.5-1.7 it reached
      # 100%) beside jumps it does not (at 2.0-2.2 it stayed at chance), so how many
      # videos it gets right is set by the span each video draws, not by its seed.
      SyntheticMotionConfig(name="key_object_wrap_mix",
                            description="key_object_4, wrapping around, spans of 1.2-2.2 "
                                        "frames, 96x96, 15 frames, 2048/1024",
                            size=96, classes=TRANSLATION_CLASSES, span=(1.2, 2.2), frames=15,
                            train_per_class=256, test_per_class=128, drift=0.005,
                            radius=(16, 12), distractors=4, wrap=True),
      # Near and far in one set: 70% of the videos cross 1.2-1.5 frames (MFNet followed
      # 1.5-1.7), 30% cross 2.2-2.4 (it followed none of 2.0-2.2); the distractors keep
      # the near spans.
      SyntheticMotionConfig(name="key_object_wrap_far30",
                            description="key_object_4, wrapping around, 70% of spans 1.2-1.5 "
                                        "frames, 30% 2.2-2.4, 96x96, 15 frames, 2048/1024",
                            size=96, classes=TRANSLATION_CLASSES, span=(1.2, 1.5), frames=15,
                            train_per_class=256, test_per_class=128, drift=0.005,
                            radius=(16, 12), distractors=4, wrap=True, far=0.3,
                            far_span=(2.2, 2.4)),
      # key_object_wrap_150 (MFNet read all of it) whose key object each video draws at an
      # opacity from [0, a/100] (its own random stream, so every other draw is unchanged):
      # below some opacity no model sees it, so how many videos a model gets right is set
      # by the opacities the videos draw, not by its seed (docs/experiments.md, design 9).
      *[SyntheticMotionConfig(name=f"key_object_faint_{a}",
                              description=f"key_object_wrap_150, the key object at an opacity "
                                          f"of 0-{a / 100:g}, 96x96, 15 frames, 2048/1024",
                              size=96, classes=TRANSLATION_CLASSES, span=(1.5, 1.7),
                              frames=15, train_per_class=256, test_per_class=128,
                              drift=0.005, radius=(16, 12), distractors=4, wrap=True,
                              faint=a / 100)
        for a in (10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100)],
      # The same opacities in the test split only: the training videos are exactly
      # key_object_wrap_150's (opaque), so what a model learns does not depend on how many
      # videos it cannot read, and the test split measures how faint a key object it reads
      # (docs/experiments.md, design 10).
      *[SyntheticMotionConfig(name=f"key_object_faint_test_{a}",
                              description=f"key_object_wrap_150, the test split's key object "
                                          f"at an opacity of 0-{a / 100:g}, 96x96, 15 frames, "
                                          "2048/1024",
                              size=96, classes=TRANSLATION_CLASSES, span=(1.5, 1.7),
                              frames=15, train_per_class=256, test_per_class=128,
                              drift=0.005, radius=(16, 12), distractors=4, wrap=True,
                              faint_test=a / 100)
        for a in (10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100)],
      SyntheticMotionConfig(name="tiny", description="for tests: 32x32, 8 frames, 32/16",
                            size=32, frames=8, train_per_class=4, test_per_class=2),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=video_builder.features(self.builder_config.classes),
                                 description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {"train": self._generate_examples(0, c.train_per_class, "train"),
            "test": self._generate_examples(1, c.test_per_class, "test")}

  def _generate_examples(self, split_id, per_class, split):
    c = self.builder_config
    make = functools.partial(_example, seed=c.seed, split_id=split_id, size=c.size,
                             frames=c.frames, classes=c.classes, span=c.span, drift=c.drift,
                             radius=c.radius, distractors=c.distractors,
                             striped_distractors=c.striped_distractors, wrap=c.wrap,
                             far=c.far, far_span=c.far_span,
                             faint=faint_of(c, split))
    return self.examples(split, [(f"{split_id}_{i:06d}", i)
                                 for i in range(per_class * len(c.classes))], make)


def _example(i, seed, split_id, size, frames, classes, span, drift, radius,
             distractors=0, striped_distractors=False, wrap=False, far=0.0,
             far_span=(2.2, 2.4), faint=0.0) -> dict:
  """Video ``i`` of a split, rendered and JPEG-encoded (run in ``prepare``'s workers)."""
  label = i % len(classes)
  clip = render(label, size, frames, np.random.default_rng([seed, split_id, i]), classes, span,
                drift, radius, distractors, striped_distractors, wrap, far, far_span,
                opacity=key_object_opacity(seed, split_id, i, faint))
  return dict(frames=video_builder.encode_frames(clip), label=label,
              video_id=f"synthetic_{split_id}_{i:06d}", fps=25.0, height=size, width=size,
              num_frames=frames)
