"""grain input pipeline over the prepared array_record shards (no TensorFlow).

MFNet's protocol (docs/datasets.md): train clips are ``frames`` frames at ``interval`` from a random
window, the short side scaled to a random size in ``train_scale`` with aspect jitter, a random
``crop`` x ``crop`` crop and a horizontal flip (``flip=False`` for datasets whose labels are
left/right); eval clips are ``num_clips`` evenly spaced windows x ``num_crops`` crops of the
video resized to ``eval_resize``, all views of a video in a row, each tagged with its
``video_index`` so accuracy can be computed per video. A video shorter than the window is
looped. Only the sampled frames are decoded. Output batches: ``clips`` uint8
``(B, T, H, W, 3)``, ``label`` int32 ``(B,)``, ``video_index`` int32 ``(B,)`` and, for
eval, ``mask`` (False on the padding of the last batch). Normalisation happens on device.
"""

import dataclasses
import os
from typing import Iterator, Optional, Sequence, Tuple

import grain.python as grain
import jax
import numpy as np
from PIL import Image

from data import video
from data.common import decode_jpeg


class DataNotPreparedError(FileNotFoundError):
  """The prepared dataset is missing; the message holds the command that builds it."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips are cut from a video (defaults: MFNet's protocol at 16x224x224).

  Sizes are in pixels: ``train_scale`` bounds the random short side, ``eval_resize`` is the
  eval short side, ``crop`` the square crop of both.
  """
  frames: int = 16
  interval: int = 2
  crop: int = 224
  train_scale: Tuple[int, int] = (224, 288)
  aspect: Tuple[float, float] = (0.8, 1.25)
  flip: bool = True
  eval_resize: int = 256
  num_clips: int = 1
  num_crops: int = 1


def clip_spec(clip, train: bool = False) -> ClipSpec:
  """The :class:`ClipSpec` of a config's ``clip`` fields (``config.clip``, or the ``clip`` of
  a checkpoint's saved config): training clips, or every evaluation view."""
  get = clip.get
  defaults = ClipSpec()
  return ClipSpec(frames=int(clip["frames"]), interval=int(get("interval", defaults.interval)),
                  crop=int(get("crop", defaults.crop)),
                  train_scale=tuple(get("train_scale", defaults.train_scale)),
                  aspect=tuple(get("aspect", defaults.aspect)),
                  flip=bool(get("flip", defaults.flip)) and train,
                  eval_resize=int(get("eval_resize", defaults.eval_resize)),
                  num_clips=1 if train else int(get("eval_clips", 1)),
                  num_crops=1 if train else int(get("eval_crops", 1)))


def clip_starts(num_frames: int, clip_frames: int, interval: int, num_clips: int) -> np.ndarray:
  """Evenly spaced window starts covering the video (window = ``clip_frames * interval``)."""
  span = clip_frames * interval
  last = max(0, num_frames - span)
  if num_clips == 1:
    return np.array([last // 2])
  return np.round(np.linspace(0, last, num_clips)).astype(int)


def train_starts(num_frames: int, clip_frames: int, interval: int) -> int:
  """How many window starts training draws from (uniformly): ``0 .. n - 1``."""
  return max(1, num_frames - clip_frames * interval + 1)


def window_indices(num_frames: int, start: int, clip_frames: int, interval: int) -> np.ndarray:
  """Frame indices ``start + i * interval`` of a clip, looped past the end of short videos."""
  return (start + interval * np.arange(clip_frames)) % num_frames


def dataset_dir(data_dir: str, name: str, config: Optional[str] = None) -> str:
  """The newest prepared version folder of ``name``/``config`` under ``data_dir``."""
  root = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(root):
    versions = sorted((v for v in os.listdir(root)
                       if os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
                      key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
  if not versions:
    source = "" if name == "synthetic_motion" else " --source_dir=<the dataset as distributed>"
    cfg = ""
    if config and config.startswith("split"):
      cfg = f" --split={config[5:]}"
    elif config and config != "default":
      cfg = f" --config={config}"
    raise DataNotPreparedError(
        f"the {name} dataset ({config or 'default'}) is not prepared in {data_dir}. Build it "
        f"with:\n  python -m kpsem_jax.prepare {name}{source} --data_dir={data_dir}{cfg}")
  return os.path.join(root, versions[-1])


def load_source(data_dir: str, name: str, config: Optional[str], split: str):
  """``(random-access source, class names)`` of a prepared split."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(dataset_dir(data_dir, name, config))
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split), list(builder.info.features["label"].names)


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  if frame.shape[1] == width and frame.shape[0] == height:
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def _frames(record, indices: Sequence[int]) -> np.ndarray:
  """The frames at ``indices`` of a record: JPEG bytes (prepared shards) or an already
  decoded ``(N, H, W, 3)`` array (``video.read_video``)."""
  frames = record["frames"]
  if isinstance(frames, np.ndarray):
    return frames[np.asarray(indices)]
  return np.stack([decode_jpeg(frames[i]) for i in indices])


class TrainClip(grain.RandomMapTransform):
  """Record -> one randomly sampled, scaled, cropped and flipped training clip."""

  def __init__(self, spec: ClipSpec):
    self.spec = spec

  def random_map(self, element, rng: np.random.Generator):
    index, record = element
    s = self.spec
    n = len(record["frames"])
    start = int(rng.integers(0, train_starts(n, s.frames, s.interval)))
    clip = _frames(record, window_indices(n, start, s.frames, s.interval))
    h, w = clip.shape[1:3]
    short = rng.uniform(*s.train_scale)
    aspect = np.sqrt(rng.uniform(*s.aspect))
    scale = short / min(h, w)
    new_w = max(s.crop, int(round(w * scale * aspect)))
    new_h = max(s.crop, int(round(h * scale / aspect)))
    top = int(rng.integers(0, new_h - s.crop + 1))
    left = int(rng.integers(0, new_w - s.crop + 1))
    clip = np.stack([_resize(f, new_w, new_h)[top:top + s.crop, left:left + s.crop]
                     for f in clip])
    if s.flip and rng.random() < 0.5:
      clip = clip[:, :, ::-1]
    return {"clips": np.ascontiguousarray(clip), "label": np.int32(record["label"]),
            "video_index": np.int32(index)}


class _WithIndex:
  """Pairs each record with its index (the video's id within the split)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return int(index), self.source[index]

  def __repr__(self):  # grain checks it when restoring an iterator's state
    return f"_WithIndex({self.source!r})"


class ProcessSlice:
  """A grain sampler: this process's contiguous slice of every global batch.

  Global batch ``s`` is positions ``[s*B, (s+1)*B)`` of one shuffled, process-independent
  ``global_sampler``; process ``p`` of ``n`` reads ``[s*B + p*b, s*B + (p+1)*b)`` with
  ``b = B/n``. The global batches, and each record's augmentation RNG (seeded by its global
  position), are the same for any number of processes.
  """

  def __init__(self, global_sampler, batch_size: int, process_index: int, process_count: int):
    self.global_sampler = global_sampler
    self.batch_size = batch_size  # per process
    self.process_index, self.process_count = process_index, process_count

  def __len__(self):
    return len(self.global_sampler) // (self.batch_size * self.process_count) * self.batch_size

  def __getitem__(self, index):
    if index < 0 or index >= len(self):
      raise IndexError(index)
    step, k = divmod(index, self.batch_size)
    global_batch = self.batch_size * self.process_count
    return self.global_sampler[step * global_batch + self.process_index * self.batch_size + k]

  def __repr__(self):  # grain compares it when restoring an iterator's state
    return (f"ProcessSlice({self.global_sampler!r}, batch_size={self.batch_size}, "
            f"process {self.process_index} of {self.process_count})")


def train_loader(source, batch_size: int, spec: ClipSpec = ClipSpec(), seed: int = 0,
                 worker_count: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, num_epochs: Optional[int] = None
                 ) -> grain.DataLoader:
  """An endless (or ``num_epochs``) shuffled loader of ``batch_size`` clips per process.

  Each process reads its slice of every global batch (``ProcessSlice``; by default
  ``jax.process_index()`` of ``jax.process_count()``). ``iter(loader)`` gives a grain
  iterator whose ``get_state()``/``set_state()`` checkpoint the position, so a resumed run
  sees the same batches.
  """
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  everything = grain.IndexSampler(num_records=len(source), shard_options=grain.NoSharding(),
                                  shuffle=True, num_epochs=num_epochs, seed=seed)
  return grain.DataLoader(data_source=_WithIndex(source),
                          sampler=ProcessSlice(everything, batch_size, process_index,
                                               process_count),
                          operations=[TrainClip(spec), grain.Batch(batch_size, drop_remainder=True)],
                          worker_count=worker_count, shard_options=grain.NoSharding())


def eval_view(record, index: int, view: int, spec: ClipSpec) -> dict:
  """View ``view`` (clip-major: clip = view // num_crops) of one video."""
  clip_id, crop_id = divmod(view, spec.num_crops)
  n = len(record["frames"])
  starts = clip_starts(n, spec.frames, spec.interval, spec.num_clips)
  clip = _frames(record, window_indices(n, int(starts[clip_id]), spec.frames,
                                                  spec.interval))
  h, w = clip.shape[1:3]
  new_w, new_h = video.resized_size(w, h, spec.eval_resize)
  new_w, new_h = max(new_w, spec.crop), max(new_h, spec.crop)
  clip = np.stack([_resize(f, new_w, new_h) for f in clip])
  top, left = (new_h - spec.crop) // 2, (new_w - spec.crop) // 2
  if spec.num_crops > 1:  # evenly along the long side: left/top ... right/bottom
    offset = int(round(crop_id * (max(new_w, new_h) - spec.crop) / (spec.num_crops - 1)))
    top, left = (top, offset) if new_w >= new_h else (offset, left)
  clip = clip[:, top:top + spec.crop, left:left + spec.crop]
  return {"clips": np.ascontiguousarray(clip), "label": np.int32(record["label"]),
          "video_index": np.int32(index)}


def eval_batches(source, batch_size: int, spec: ClipSpec = ClipSpec(),
                 process_index: Optional[int] = None, process_count: Optional[int] = None
                 ) -> Iterator[dict]:
  """All ``num_clips x num_crops`` views of this process's videos, in fixed-size batches.

  Videos are split across processes (``jax.process_index()`` by default); the last batch
  is padded with copies of its first view and ``mask=False``, and every process yields the
  same number of batches (a process with fewer videos adds fully masked ones), as the
  global jitted forward needs.
  """
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  views = spec.num_clips * spec.num_crops
  videos = range(process_index, len(source), process_count)
  dataset = grain.MapDataset.range(len(videos) * views).map(
      lambda i: eval_view(source[videos[i // views]], videos[i // views], i % views, spec))
  most_views = -(-len(source) // process_count) * views
  for start in range(0, most_views, batch_size):
    items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
    mask = np.array([True] * len(items) + [False] * (batch_size - len(items)))
    if not items:  # this process ran out of videos before the others
      items = [eval_view(source[0], 0, 0, spec)]
    items += [items[0]] * (batch_size - len(items))
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    batch["mask"] = mask
    yield batch
