"""grain input pipeline over the prepared array_record shards (no TensorFlow): the order of
the training clips over processes and the batches (the source: ``video_source.py``; the
clips: ``clips.py``; the worker processes: ``loader_workers.py``).

MFNet's protocol (docs/datasets.md): train clips are ``frames`` frames at ``interval`` from a random
window, the short side scaled to a random size in ``train_scale`` with aspect jitter, a random
``crop`` x ``crop`` crop and a horizontal flip (``flip=False`` for datasets whose labels are
left/right); eval clips are ``num_clips`` evenly spaced windows x ``num_crops`` crops of the
video resized to ``eval_resize``, all views of a video in a row, each tagged with its
``video_index`` so accuracy can be computed per video. A video shorter than the window is
looped. Only the sampled frames are read and decoded (``kpsem_jax.data.frames``), and only the crop
region of each is resampled. A batch is made whole by one worker process, so batches do not
depend on the number of workers. Output batches: ``clips`` uint8 ``(B, T, H, W, 3)``,
``label`` int32 ``(B,)``, ``video_index`` int32 ``(B,)`` and, for eval, ``mask`` (False on
the padding of the last batch). Normalisation happens on device.
"""

from typing import Iterator, List, Optional, Sequence, Tuple

import grain.python as grain
import jax
import numpy as np

from kpsem_jax.data import resample
from kpsem_jax.data.clips import ClipSpec, eval_views, train_clip
from kpsem_jax.data.loader_workers import prefetched, resolve_workers
from kpsem_jax.data.video_source import VideoSource


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
      self._iterator = prefetched(self._make(self._step, stop), self._workers)
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
    iterator = prefetched(dataset, resolve_workers(worker_count))
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
