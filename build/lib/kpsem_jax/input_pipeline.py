"""grain input pipeline over the prepared array_record shards (no TensorFlow).

MFNet's protocol (docs/datasets.md): train clips are ``frames`` frames at ``interval`` from a random
window, the short side scaled to a random size in ``train_scale`` with aspect jitter, a random
``crop`` x ``crop`` crop and a horizontal flip (``flip=False`` for datasets whose labels are
left/right); eval clips are ``num_clips`` evenly spaced windows x ``num_crops`` crops of the
video resized to ``eval_resize``, all views of a video in a row, each tagged with its
``video_index`` so accuracy can be computed per video. A video shorter than the window is
looped. Only the sampled frames are read and decoded (``data.frames``), and only the crop
region of each is resampled. A batch is made whole by one worker process, so batches do not
depend on the number of workers. Output batches: ``clips`` uint8 ``(B, T, H, W, 3)``,
``label`` int32 ``(B,)``, ``video_index`` int32 ``(B,)`` and, for eval, ``mask`` (False on
the padding of the last batch). Normalisation happens on device.
"""

import dataclasses
import os
import signal
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import grain.python as grain
import jax
import numpy as np
from PIL import Image

import data as data_lib
from data import frames as frames_lib
from data import resample
from data import video as video_lib


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


def window_length(clip_frames: int, interval: int) -> int:
  """Frames a clip spans, first to last sampled frame: ``(clip_frames - 1) * interval + 1``
  (the original PyTorch-MFNet samplers' ``frame_range``)."""
  return (clip_frames - 1) * interval + 1


def clip_starts(num_frames: int, clip_frames: int, interval: int, num_clips: int) -> np.ndarray:
  """Evenly spaced window starts covering the video (:func:`window_length`)."""
  last = max(0, num_frames - window_length(clip_frames, interval))
  if num_clips == 1:
    return np.array([last // 2])
  return np.round(np.linspace(0, last, num_clips)).astype(int)


def train_starts(num_frames: int, clip_frames: int, interval: int) -> int:
  """How many window starts training draws from (uniformly): ``0 .. n - 1``, every start
  whose window (:func:`window_length`) ends inside the video; 1 for a shorter video."""
  return max(1, num_frames - window_length(clip_frames, interval) + 1)


def window_indices(num_frames: int, start: int, clip_frames: int, interval: int) -> np.ndarray:
  """Frame indices ``start + i * interval`` of a clip, looped past the end of short videos."""
  return (start + interval * np.arange(clip_frames)) % num_frames


def _version_key(version: str) -> Tuple[int, ...]:
  return tuple(int(p) for p in version.split(".") if p.isdigit())


def older_version(folder: str, version: str) -> bool:
  """Whether a prepared version ``folder`` (``.../<name>/<config>/<version>``) predates
  ``version``."""
  return _version_key(os.path.basename(folder)) < _version_key(version)


def dataset_dir(data_dir: str, name: str, config: Optional[str] = None) -> str:
  """The newest prepared version folder of ``name``/``config`` under ``data_dir``; a
  dataset prepared only in the old whole-video layout (before version
  ``data.LAYOUT_VERSION``) is not read: the error says to rebuild it."""
  root = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(root):
    versions = sorted((v for v in os.listdir(root)
                       if os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
                      key=_version_key)
  current = [v for v in versions if _version_key(v) >= _version_key(data_lib.LAYOUT_VERSION)]
  if not current:
    what = (f"is prepared in {os.path.join(root, versions[-1])} in the old layout that reads "
            f"whole videos (version {versions[-1]}); rebuild it" if versions else
            f"is not prepared in {data_dir}. Build it")
    raise DataNotPreparedError(
        f"the {name} dataset ({config or 'default'}) {what} "
        f"with:\n  {_prepare_command(data_dir, name, config)}")
  return os.path.join(root, current[-1])


def _prepare_command(data_dir: str, name: str, config: Optional[str]) -> str:
  from kpsem_jax import prepare  # pylint: disable=import-outside-toplevel
  return prepare.prepare_command(data_dir, name, config)


def load_source(data_dir: str, name: str, config: Optional[str], split: str
                ) -> Tuple["VideoSource", List[str]]:
  """``(random-access source of videos, class names)`` of a prepared split."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from google.protobuf import json_format  # pylint: disable=import-outside-toplevel
  root = dataset_dir(data_dir, name, config)

  def damaged(path, reason):
    return DataNotPreparedError(
        f"the {name} dataset ({config or 'default'}) in {root} is damaged: {path}: {reason}; "
        f"remove {root} and rebuild it with:\n  {_prepare_command(data_dir, name, config)}")
  try:
    builder = tfds.builder_from_directory(root)
  except (json_format.ParseError, ValueError, KeyError, OSError) as e:
    raise damaged(os.path.join(root, "dataset_info.json"),
                  f"cannot be read ({' '.join(str(e).split())[:200]})") from None
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
  # Each shard holds the records the build wrote (its index read, no record decoded).
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  info = builder.info.splits[split]
  for path, expected in zip(info.filepaths, info.shard_lengths):
    try:
      reader = array_record_module.ArrayRecordReader(str(path))
      found = reader.num_records()
      reader.close()
    except (RuntimeError, ValueError, OSError) as e:
      raise damaged(str(path), f"cannot be read ({' '.join(str(e).split())[:200]})") from None
    if found != expected:
      raise damaged(str(path), f"holds {found} records where the build wrote {expected}")
  return (VideoSource(builder.as_data_source(split), root),
          list(builder.info.features["label"].names))


class Video:
  """One video of a source: ``index`` (its id within the split), ``label``, ``num_frames``,
  and ``frames(indices)``, its frames at those indices, each ``(H, W, 3)`` uint8.

  ``read(indices)`` gives the stored frames (JPEG bytes, or arrays); ``frames`` decodes each
  as it is consumed, so a frame is resized while it is still in the cache (19% faster per
  clip than decoding all first), and a frame listed twice (a looped short video) once.
  """

  def __init__(self, index: int, label: int, num_frames: int,
               read: Callable[[Sequence[int]], Sequence]):
    self.index, self.label, self.num_frames, self._read = index, label, num_frames, read

  def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
    indices = [int(i) for i in indices]
    unique = sorted(set(indices))
    stored = dict(zip(unique, self._read(unique)))
    repeated = {i for i in unique if indices.count(i) > 1}
    decoded: Dict[int, np.ndarray] = {}
    for i in indices:
      frame = decoded.get(i)
      if frame is None:
        item = stored[i]
        frame = frames_lib.decode_jpeg(item) if isinstance(item, bytes) else item
        if i in repeated:
          decoded[i] = frame
      yield frame

  @classmethod
  def from_frames(cls, frames: np.ndarray, label: int = 0, index: int = 0) -> "Video":
    """A video already decoded, ``(N, H, W, 3)`` (``predict``'s files, tests)."""
    return cls(index, label, len(frames), lambda indices: [frames[i] for i in indices])


class VideoSource:
  """A prepared split: ``source[i]`` is a :class:`Video` whose ``frames`` reads and decodes
  only the frames asked for (``data.frames``); ``bytes_read`` counts the JPEG bytes read
  in this process."""

  def __init__(self, records, root: str):
    self.records = records  # the TFDS data source of the split's per-video examples
    self.reader = frames_lib.FrameReader(root)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index: int) -> Video:
    record = self.records[int(index)]
    frames_file = record["frames_file"]
    frames_file = frames_file.decode() if isinstance(frames_file, bytes) else str(frames_file)
    first = int(record["first_frame"])
    return Video(int(index), int(record["label"]), int(record["num_frames"]),
                 lambda indices: self.reader.read(frames_file, [first + i for i in indices]))

  @property
  def bytes_read(self) -> int:
    return self.reader.bytes_read

  def __repr__(self):
    return f"VideoSource({self.records!r})"


def resize_crop(frame: np.ndarray, box: Tuple[float, float, float, float], size: int,
                flip: bool = False) -> np.ndarray:
  """The ``size x size`` bilinear resampling of ``box`` (left, top, right, bottom, in source
  pixels) of ``frame``, mirrored left-right if ``flip``: the same pixels as resizing the
  whole frame by ``size / box width`` and cropping (Pillow's filter, evaluated on the crop
  only; ``data.resample``)."""
  return resample.Crop(frame.shape, box, size)(frame, flip)


def train_clip(video: Video, spec: ClipSpec, rng: np.random.Generator,
               out: Optional[np.ndarray] = None) -> np.ndarray:
  """One randomly sampled, scaled, cropped and flipped training clip ``(T, S, S, 3)``.

  Draws, in order: the window start, the short side in ``train_scale``, the aspect in
  ``aspect``, the crop's top and left, the flip. Only the crop region of each frame is
  resampled, into ``out`` (allocated when None).
  """
  s = spec
  n = video.num_frames
  start = int(rng.integers(0, train_starts(n, s.frames, s.interval)))
  frames = video.frames(window_indices(n, start, s.frames, s.interval))
  first = next(frames)
  h, w = first.shape[:2]
  short = rng.uniform(*s.train_scale)
  aspect = np.sqrt(rng.uniform(*s.aspect))
  scale = short / min(h, w)
  new_w = max(s.crop, int(round(w * scale * aspect)))
  new_h = max(s.crop, int(round(h * scale / aspect)))
  top = int(rng.integers(0, new_h - s.crop + 1))
  left = int(rng.integers(0, new_w - s.crop + 1))
  flip = bool(s.flip and rng.random() < 0.5)
  sx, sy = w / new_w, h / new_h
  box = (left * sx, top * sy, (left + s.crop) * sx, (top + s.crop) * sy)
  if out is None:
    out = np.empty((s.frames, s.crop, s.crop, 3), np.uint8)
  crop = resample.Crop(first.shape, box, s.crop)  # one set of coefficients for the clip
  crop(first, flip, out[0])
  for t, frame in enumerate(frames, 1):
    crop(frame, flip, out[t])
  return out


class GlobalOrder:
  """Position -> ``(video, rng)`` of the one shuffled sequence every process reads: epoch
  ``e`` is the permutation ``default_rng([seed, e])`` of the videos; the clip at position
  ``i`` draws its augmentation from ``Philox(key=seed + i)``. ``len()`` is
  ``num_epochs x videos`` (endless: None epochs)."""

  def __init__(self, num_videos: int, seed: int, num_epochs: Optional[int] = None):
    self.num_videos, self.seed, self.num_epochs = num_videos, int(seed), num_epochs
    self._epoch, self._permutation = None, None

  def __len__(self):
    if self.num_epochs is None:
      raise TypeError("an endless order has no length")
    return self.num_videos * self.num_epochs

  def __getitem__(self, position: int) -> Tuple[int, np.random.Generator]:
    epoch, i = divmod(int(position), self.num_videos)
    if self.num_epochs is not None and epoch >= self.num_epochs:
      raise IndexError(position)
    if epoch != self._epoch:
      self._epoch = epoch
      self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_videos)
    rng = np.random.Generator(np.random.Philox(key=self.seed + int(position)))
    return int(self._permutation[i]), rng


class ProcessSlice:
  """This process's contiguous slice of every global batch, as global positions.

  Global batch ``s`` is positions ``[s*B, (s+1)*B)`` of one shuffled, process-independent
  ``order``; process ``p`` of ``n`` reads ``[s*B + p*b, s*B + (p+1)*b)`` with
  ``b = B/n``. The global batches, and each clip's augmentation RNG (seeded by its global
  position, see :class:`GlobalOrder`), are the same for any number of processes and
  workers.
  """

  def __init__(self, order: GlobalOrder, batch_size: int, process_index: int,
               process_count: int):
    self.order = order
    self.batch_size = batch_size  # per process
    self.process_index, self.process_count = process_index, process_count

  def num_batches(self) -> int:
    return len(self.order) // (self.batch_size * self.process_count)

  def batch(self, step: int) -> List[Tuple[int, np.random.Generator]]:
    """``(video, rng)`` of each clip of this process's part of batch ``step``."""
    first = step * self.batch_size * self.process_count + self.process_index * self.batch_size
    return [self.order[first + k] for k in range(self.batch_size)]


class TrainBatch(grain.MapTransform):
  """Batch number -> this process's part of that global batch: ``clips`` uint8
  ``(b, T, S, S, 3)``, ``label`` and ``video_index`` int32 ``(b,)``. A whole batch is made
  by one worker, so batches do not depend on the number of workers."""

  def __init__(self, source: VideoSource, positions: ProcessSlice, spec: ClipSpec):
    self.source, self.positions, self.spec = source, positions, spec

  def map(self, step: int) -> dict:
    s = self.spec
    records = self.positions.batch(int(step))
    clips = np.empty((len(records), s.frames, s.crop, s.crop, 3), np.uint8)
    labels = np.empty(len(records), np.int32)
    indices = np.empty(len(records), np.int32)
    for k, (key, rng) in enumerate(records):
      video = self.source[key]
      train_clip(video, s, rng, out=clips[k])
      labels[k], indices[k] = video.label, video.index
    return {"clips": clips, "label": labels, "video_index": indices}


def resolve_workers(num_workers: int) -> int:
  """``config.num_workers``: a count, or -1 for one per core this process may use (none
  on a single core, where a worker process would only add copying)."""
  if num_workers >= 0:
    return int(num_workers)
  cores = data_lib.usable_cores()
  return cores if cores > 1 else 0


# Batches made ahead of the one being consumed: by a thread of the training process when it
# makes them itself, else by each worker process (its one-batch hand-over buffer). Host
# memory is bounded in batches, not by the length of the videos.
PREFETCH_BATCHES = 2


def _released(element: dict) -> dict:
  """Unlinks now the shared memory under a worker process's arrays (the mapping stays
  valid until the arrays are freed). grain unlinks it in a background thread when an array
  is freed, and at exit those requests may not have run: Python then warns of "leaked
  shared_memory objects" (google/grain#398)."""
  for value in element.values():
    shm = getattr(value, "shm", None)
    if shm is not None and getattr(value, "_unlink_on_del", False):
      shm.unlink()
      value._unlink_on_del = False  # pylint: disable=protected-access
  return element


def _prefetched(dataset: "grain.MapDataset", workers: int):
  """The iterator of ``dataset``, in order: made in this process, ``PREFETCH_BATCHES``
  ahead by one thread, or in ``workers`` spawned processes, each making one element at a
  time and handing it over."""
  if workers <= 0:
    return iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=PREFETCH_BATCHES)))
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (a notebook, pytest)
    flags.FLAGS.mark_as_parsed()
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=1), worker_init_fn=_worker_signals)
  return _StartedWithStopSignalsBlocked(iter(iterable.map(_released)))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StartedWithStopSignalsBlocked:
  """An iterator whose first ``next()`` (when grain starts the worker processes) runs with
  SIGINT and SIGTERM blocked: a started process inherits the blocked mask and keeps it
  until :func:`_worker_signals` ignores both, so a Ctrl-C during start-up (it reaches the
  whole process group) never kills a worker; the main process gets it on unblocking."""

  def __init__(self, iterator):
    self._iterator, self._started = iterator, False

  def __iter__(self):
    return self

  def __next__(self):
    if self._started:
      return next(self._iterator)
    self._started = True
    if threading.current_thread() is not threading.main_thread():
      return next(self._iterator)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
      return next(self._iterator)
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, previous)

  def close(self):
    if hasattr(self._iterator, "close"):
      self._iterator.close()


def _worker_signals(worker_index: int, worker_count: int) -> None:  # pylint: disable=unused-argument
  """In a worker process: SIGINT and SIGTERM are left to the main process (Ctrl-C reaches
  the whole process group; the main process saves, then stops its workers), and the
  worker exits when the main process dies (:func:`_exit_with_parent`)."""
  for signum in STOP_SIGNALS:
    signal.signal(signum, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True,
                   name="exit-with-parent").start()


def _exit_with_parent(parent: int, period_s: float = 1.0) -> None:
  """Ends this process within ``period_s`` once ``parent`` is gone (killed with SIGKILL,
  say). Linux's PR_SET_PDEATHSIG would be sooner, but it fires when the parent *thread*
  that started the worker ends: grain starts workers from a thread pool whose threads end
  when the loader is closed, and the killed workers then left their last batch's shared
  memory behind ("leaked shared_memory objects" at exit)."""
  while os.getppid() == parent:
    time.sleep(period_s)
  os._exit(1)  # pylint: disable=protected-access


class TrainIterator:
  """Batches from ``start`` on; ``get_state()`` / ``set_state()`` hold the next batch
  number only (``{"step": n}``), so a run can resume with any number of workers."""

  def __init__(self, make_dataset, num_batches: Optional[int], workers: int, start: int = 0):
    self._make, self._num_batches, self._workers = make_dataset, num_batches, workers
    self._step, self._iterator = int(start), None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      stop = self._num_batches if self._num_batches is not None else 1 << 62
      self._iterator = _prefetched(self._make(self._step, stop), self._workers)
    batch = next(self._iterator)
    self._step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    self.close()
    self._step = int(state["step"])

  def close(self) -> None:
    if self._iterator is not None and hasattr(self._iterator, "close"):
      self._iterator.close()
    self._iterator = None


class TrainLoader:
  """The training batches of one process (see :func:`train_loader`); ``iter()`` starts at
  batch ``start``."""

  def __init__(self, source: VideoSource, positions: ProcessSlice, spec: ClipSpec,
               workers: int, finite: bool):
    self.source, self.positions, self.spec = source, positions, spec
    self.workers, self.finite = workers, finite

  def dataset(self, start: int, stop: int) -> "grain.MapDataset":
    """Batches ``start .. stop - 1`` as a grain ``MapDataset``."""
    return grain.MapDataset.range(start, stop).map(
        TrainBatch(self.source, self.positions, self.spec))

  def iterator(self, start: int = 0) -> TrainIterator:
    return TrainIterator(self.dataset, self.positions.num_batches() if self.finite else None,
                         self.workers, start)

  def __iter__(self):
    return self.iterator()


def train_loader(source: VideoSource, batch_size: int, spec: ClipSpec = ClipSpec(),
                 seed: int = 0, worker_count: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, num_epochs: Optional[int] = None
                 ) -> TrainLoader:
  """An endless (or ``num_epochs``) shuffled loader of ``batch_size`` clips per process.

  Each process reads its slice of every global batch (``ProcessSlice``; by default
  ``jax.process_index()`` of ``jax.process_count()``); batch ``n`` is the same for any
  number of processes and ``worker_count`` worker processes (-1: one per core). A clip reads
  and decodes only its own frames. ``loader.iterator(start)`` begins at batch ``start`` (a
  resumed run at its step); ``iter(loader)`` at 0.
  """
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  resample.available()  # builds the C++ resampler here, once, before any worker starts
  everything = GlobalOrder(len(source), seed, num_epochs)
  positions = ProcessSlice(everything, batch_size, process_index, process_count)
  return TrainLoader(source, positions, spec, resolve_workers(worker_count),
                     finite=num_epochs is not None)


def eval_views(video: Video, spec: ClipSpec) -> np.ndarray:
  """All ``num_clips x num_crops`` views of a video, uint8 ``(V, T, S, S, 3)``, clip-major
  (view = clip * num_crops + crop). Each clip's frames are decoded and resized once for
  all its crops: the short side to ``eval_resize`` (at least ``crop``), then the centre
  crop, or ``num_crops`` crops evenly along the long side (left/top ... right/bottom)."""
  n = video.num_frames
  starts = clip_starts(n, spec.frames, spec.interval, spec.num_clips)
  views = np.empty((spec.num_clips * spec.num_crops, spec.frames, spec.crop, spec.crop, 3),
                   np.uint8)
  for c, start in enumerate(starts):
    frames = video.frames(window_indices(n, int(start), spec.frames, spec.interval))
    for t, frame in enumerate(frames):
      h, w = frame.shape[:2]
      new_w, new_h = video_lib.resized_size(w, h, spec.eval_resize)
      new_w, new_h = max(new_w, spec.crop), max(new_h, spec.crop)
      frame = _resize(frame, new_w, new_h)
      for k, (top, left) in enumerate(_crop_corners(new_w, new_h, spec)):
        views[c * spec.num_crops + k, t] = frame[top:top + spec.crop, left:left + spec.crop]
  return views


def _crop_corners(width: int, height: int, spec: ClipSpec) -> List[Tuple[int, int]]:
  top, left = (height - spec.crop) // 2, (width - spec.crop) // 2
  if spec.num_crops == 1:
    return [(top, left)]
  corners = []
  for k in range(spec.num_crops):  # evenly along the long side
    offset = int(round(k * (max(width, height) - spec.crop) / (spec.num_crops - 1)))
    corners.append((top, offset) if width >= height else (offset, left))
  return corners


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  if frame.shape[1] == width and frame.shape[0] == height:
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


class EvalVideo(grain.MapTransform):
  """Position -> every view of that video of this process: ``clips`` ``(V, T, S, S, 3)``,
  ``label``, ``video_index``."""

  def __init__(self, source, videos: Sequence[int], spec: ClipSpec):
    self.source, self.videos, self.spec = source, videos, spec

  def map(self, position: int) -> dict:
    video = self.source[self.videos[int(position)]]
    return {"clips": eval_views(video, self.spec), "label": np.int32(video.label),
            "video_index": np.int32(video.index)}


def eval_batches(source, batch_size: int, spec: ClipSpec = ClipSpec(),
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 worker_count: int = 0) -> Iterator[dict]:
  """All ``num_clips x num_crops`` views of this process's videos, in fixed-size batches.

  Videos are split across processes (``jax.process_index()`` by default) and decoded in
  ``worker_count`` worker processes (-1: one per core), each frame once for all its crops;
  the views of a video come in a row. The last batch is padded with copies of its first
  view and ``mask=False``, and every process yields the same number of batches (a process
  with fewer videos adds fully masked ones, of zeros), as the global jitted forward needs.
  """
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  videos = range(process_index, len(source), process_count)
  most_batches = eval_batch_count(len(source), batch_size, spec, process_count)

  def empty():
    return {"clips": np.zeros((batch_size, spec.frames, spec.crop, spec.crop, 3), np.uint8),
            "label": np.zeros(batch_size, np.int32),
            "video_index": np.zeros(batch_size, np.int32)}

  def finished(batch, count):
    if count < batch_size:
      for value in batch.values():
        value[count:] = value[0]
    return dict(batch, mask=np.arange(batch_size) < count)

  batch, count, emitted = empty(), 0, 0
  if len(videos):
    dataset = grain.MapDataset.range(len(videos)).map(EvalVideo(source, videos, spec))
    iterator = _prefetched(dataset, resolve_workers(worker_count))
    try:
      for element in iterator:
        for view in element["clips"]:  # each view copied once, into its batch
          batch["clips"][count] = view
          batch["label"][count] = element["label"]
          batch["video_index"][count] = element["video_index"]
          count += 1
          if count == batch_size:
            yield finished(batch, count)
            batch, count, emitted = empty(), 0, emitted + 1
    finally:
      if hasattr(iterator, "close"):
        iterator.close()
    if count:
      yield finished(batch, count)
      emitted += 1
  for _ in range(emitted, most_batches):  # fewer videos than another process
    yield finished(empty(), 0)


def eval_batch_count(num_videos: int, batch_size: int, spec: ClipSpec = ClipSpec(),
                     process_count: int = 1) -> int:
  """How many batches :func:`eval_batches` yields on every process."""
  views = spec.num_clips * spec.num_crops
  return _ceil_div(_ceil_div(num_videos, process_count) * views, batch_size)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)
