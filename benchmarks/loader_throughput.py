"""The input pipeline's speed, bytes read and memory, per number of worker processes.

    python benchmarks/loader_throughput.py [--workers=0,1,2] [--batches=12] [--batch_size=8]
        [--train_steps=60]

Builds (once, under --data_dir) a miniature UCF101 made of the real fixture videos
(../shared/fixtures; 127-310 frames each, stored at the default 256-px short side), then
times the training loader at MFNet's 16x224x224 for each worker count and the evaluation
(10 clips x 3 crops per video) for the largest. For each it prints clips/s, clips/s per
core (workers, or 1 for the in-process loader), MB read per clip (the ``read_chars`` of
this process and its workers: every byte read, from page cache or disk) beside the bytes of
the JPEGs its frames hold, and the peak resident memory of this process and of its largest
worker. Before that, on one core, what each step of a 16x224x224 clip costs the new way and
the old way, side by side (``--breakdown``): reading 16 frames vs the whole video, decoding
with simplejpeg vs Pillow, resampling the crop region in C++ (``kpsem_jax/data/resample.py``; the
flip written mirrored) vs resizing whole frames, cropping (and copying a reversed view),
the order's lookup vs grain's ``IndexSampler``. Then ``train.py
--config=configs/ucf101.py:tiny_model`` (the smallest C2D the configs build, on the same
clips) for ``--train_steps`` steps with ``num_workers`` 0 and the default: its clips/s and
the share of the time it waited for data (``metrics.jsonl``). The last line sums it up:
``loader: <clips/s per core> clips/s per core at 16x224x224, <MB> MB read per clip``.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags, logging
import numpy as np
import psutil

from kpsem_jax.data import clips as clips_lib
from kpsem_jax.data import frames as frames_lib
from kpsem_jax.data import input_pipeline as ip
from kpsem_jax.data import prepare as prepare_lib
from kpsem_jax.data import video_source
from kpsem_jax.testing import reference_clips

flags.DEFINE_string("data_dir", "/tmp/kpsem_bench_data", "where the benchmark dataset goes")
flags.DEFINE_list("workers", ["0", "1", "2"], "worker counts to time (0: in this process)")
flags.DEFINE_integer("batches", 12, "timed batches per measurement (after 2 warm-up)")
flags.DEFINE_integer("batch_size", 8, "clips per batch")
flags.DEFINE_integer("eval_videos", 5, "videos of the timed evaluation (10 x 3 views each)")
flags.DEFINE_integer("train_steps", 60, "steps of the end-to-end train.py run (0: none)")
flags.DEFINE_bool("breakdown", True, "time each step of a clip, new way beside old way")
FLAGS = flags.FLAGS
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")


def fixture_ucf101(root):
  """A miniature UCF101 (official lists, every fixture video in the train list)."""
  src = os.path.join(root, "ucf101_src")
  if os.path.isdir(src):
    return src
  lists = os.path.join(src, "ucfTrainTestlist")
  os.makedirs(lists)
  shutil.copy(os.path.join(FIXTURES, "splits", "ucf101_ucfTrainTestlist", "classInd.txt"), lists)
  videos = sorted(f for f in os.listdir(os.path.join(FIXTURES, "videos"))
                  if f.endswith((".avi", ".mp4", ".mkv")))
  os.makedirs(os.path.join(src, "UCF-101", "ApplyEyeMakeup"))
  with open(os.path.join(lists, "trainlist01.txt"), "w") as train:
    for i, name in enumerate(videos):
      target = f"ApplyEyeMakeup/v_ApplyEyeMakeup_g{i + 1:02d}_c01{os.path.splitext(name)[1]}"
      shutil.copy(os.path.join(FIXTURES, "videos", name), os.path.join(src, "UCF-101", target))
      train.write(f"{target} 1\n")
  first = f"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01{os.path.splitext(videos[0])[1]}"
  with open(os.path.join(lists, "testlist01.txt"), "w") as test:
    test.write(first + "\n")  # the first video: a test split for train.py's evaluation
  return src


class ProcessTree:
  """``read_chars`` and peak resident memory of this process and its worker processes,
  polled every 20 ms (a worker's counters are kept from its last poll)."""

  def __init__(self):
    self.me = psutil.Process()
    self.reads = {}
    self.peak_self = self.peak_worker = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()

  def _poll(self):
    while not self._stop.is_set():
      self.sample()
      time.sleep(0.02)

  def sample(self):
    for p in [self.me] + self.me.children(recursive=True):
      try:
        self.reads[p.pid] = p.io_counters().read_chars
        rss = p.memory_info().rss
      except psutil.Error:
        continue
      if p.pid == self.me.pid:
        self.peak_self = max(self.peak_self, rss)
      else:
        self.peak_worker = max(self.peak_worker, rss)

  def read_chars(self) -> int:
    self.sample()
    return sum(self.reads.values())

  def stop(self):
    self._stop.set()
    self._thread.join()


def time_train(source, spec, workers):
  tree = ProcessTree()
  loader = ip.train_loader(source, FLAGS.batch_size, spec, seed=0, worker_count=workers,
                           process_index=0, process_count=1)
  it = iter(loader)
  for _ in range(2):  # warm-up: worker start-up, first reads
    next(it)
  read0, jpeg0 = tree.read_chars(), source.bytes_read
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(it)
  seconds = time.perf_counter() - start
  read = tree.read_chars() - read0
  it.close()
  tree.stop()
  clips = FLAGS.batches * FLAGS.batch_size
  jpeg = (source.bytes_read - jpeg0) / clips if workers == 0 else None
  return clips / seconds, read / clips, jpeg, tree.peak_self, tree.peak_worker


def time_eval(source, spec, workers):
  videos = min(FLAGS.eval_videos, len(source))
  subset = Subset(source, videos)
  start = time.perf_counter()
  views = sum(int(b["mask"].sum()) for b in ip.eval_batches(
      subset, FLAGS.batch_size, spec, process_index=0, process_count=1, worker_count=workers))
  return views / (time.perf_counter() - start)


class Subset:
  """The first ``n`` videos of a source."""

  def __init__(self, source, n):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[i]


def train_end_to_end(steps, workers):
  """``(clips/s, share of the time waiting for data)`` of ``train.py`` with a trivially
  small model and ``workers`` loader processes (-1: the default), from ``metrics.jsonl``:
  medians of the logged rows after the first (compilation)."""
  repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run([sys.executable, os.path.join(repo, "train.py"),
                    "--config=" + os.path.join(repo, "configs", "ucf101.py") + ":tiny_model",
                    f"--config.dataset.data_dir={FLAGS.data_dir}",
                    f"--config.num_workers={workers}",
                    f"--config.num_train_steps={steps}", f"--workdir={workdir}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in rows if "train/clips_per_second" in r][1:]
  return (float(np.median([r["train/clips_per_second"] for r in rows])),
          float(np.median([r["train/data_wait"] for r in rows])))


def _ms(fn, repeats):
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(repeats):
      fn()
    best = min(best, (time.perf_counter() - start) / repeats)
  return best * 1e3


def breakdown(source, spec):
  """Milliseconds per 16x224x224 clip of each step, new way beside old way (one core)."""
  import grain.python as grain  # pylint: disable=import-outside-toplevel
  video = max(range(len(source)), key=lambda i: source[i].num_frames)  # the longest
  record = source.records[video]
  first, n = int(record["first_frame"]), int(record["num_frames"])
  frames_file = record["frames_file"].decode()
  indices = [first + int(i) for i in clips_lib.window_indices(n, 10, spec.frames, spec.interval)]
  reader = frames_lib.FrameReader(source.reader.root)
  jpegs = reader.read(frames_file, indices)
  decoded = [frames_lib.decode_jpeg(j) for j in jpegs]
  h, w = decoded[0].shape[:2]
  new_w, new_h, top, left, crop = int(w * 250 / h), 250, 13, 17, spec.crop
  box = (left * w / new_w, top * h / new_h, (left + crop) * w / new_w, (top + crop) * h / new_h)
  whole = list(range(first, first + n))
  order = ip.GlobalOrder(len(source), 0)
  sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.NoSharding(),
                               shuffle=True, seed=0)
  rows = [
      ("read the frames", lambda: reader.read(frames_file, indices),
       f"read the whole video ({n} frames)", lambda: reader.read(frames_file, whole)),
      ("decode, simplejpeg", lambda: [frames_lib.decode_jpeg(j) for j in jpegs],
       "decode, Pillow", lambda: [reference_clips.pillow_decode(j) for j in jpegs]),
      ("resample the crop region (C++)",
       lambda: [clips_lib.resize_crop(f, box, crop) for f in decoded],
       "resize whole frames, crop",
       lambda: [reference_clips._resize(f, new_w, new_h)[top:top + crop, left:left + crop]
                for f in decoded]),
      ("resample and flip (C++)",
       lambda: [clips_lib.resize_crop(f, box, crop, True) for f in decoded],
       "resize whole, crop, reversed copy",
       lambda: np.ascontiguousarray(np.stack(
           [reference_clips._resize(f, new_w, new_h)[top:top + crop, left:left + crop]
            for f in decoded])[:, :, ::-1])),
      ("the order's lookup", lambda: order[12345], "grain IndexSampler lookup",
       lambda: sampler[12345]),
  ]
  print(f"one clip, one core, {spec.frames} frames of the {n}-frame video (ms per clip):")
  print(f"  {'new':34s} {'ms':>6s}   {'old':34s} {'ms':>6s}")
  total_new = total_old = 0.0
  for i, (name_new, new, name_old, old) in enumerate(rows):
    a, b = _ms(new, 20), _ms(old, 5)
    share = 0.5 if i in (2, 3) else 1.0  # half the clips are flipped
    total_new, total_old = total_new + share * a, total_old + share * b
    print(f"  {name_new:34s} {a:6.2f}   {name_old:34s} {b:6.2f}")
  print(f"  {'a clip (half of them flipped)':34s} {total_new:6.2f}   {'':34s} {total_old:6.2f}")


def main(_):
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  logging.set_verbosity(logging.WARNING)
  os.makedirs(FLAGS.data_dir, exist_ok=True)
  prepare_lib.prepare("ucf101", FLAGS.data_dir, source_dir=fixture_ucf101(FLAGS.data_dir),
                      split=1, log=lambda *a: None)
  source, _ = video_source.load_source(FLAGS.data_dir, "ucf101", "split1", "train")
  spec = clips_lib.ClipSpec()  # 16 frames at interval 2, scale jitter 224-288, 224 crop, flip
  print(f"fixture videos ({len(source)}, 127-310 frames, 256-px short side), train clips "
        f"16x224x224, batch {FLAGS.batch_size}, {len(os.sched_getaffinity(0))} cores")
  if FLAGS.breakdown:
    breakdown(source, spec)
  print(f"{'workers':>7s} {'clips/s':>8s} {'per core':>9s} {'MB read/clip':>13s} "
        f"{'JPEG MB/clip':>13s} {'peak RSS main':>14s} {'largest worker':>15s}")
  rows = {}
  jpeg_mb = None
  for w in (int(x) for x in FLAGS.workers):
    rate, read, jpeg, peak_self, peak_worker = time_train(source, spec, w)
    jpeg_mb = jpeg / 2**20 if jpeg is not None else jpeg_mb
    per_core = rate / max(1, w)
    rows[w] = (rate, per_core, read / 2**20)
    print(f"{w:7d} {rate:8.1f} {per_core:9.1f} {read / 2**20:13.3f} "
          f"{(f'{jpeg_mb:.3f}' if jpeg_mb is not None else '-'):>13s} "
          f"{peak_self / 2**20:10.0f} MiB {peak_worker / 2**20:11.0f} MiB")
  base = rows.get(1, rows.get(0))
  for w, (rate, _, _) in rows.items():
    if w > 1 and base:
      print(f"{w} workers / 1: {rate / base[0]:.2f}x")
  most = max(rows)
  eval_spec = clips_lib.ClipSpec(num_clips=10, num_crops=3)
  print(f"eval (10 clips x 3 crops, {most} workers): "
        f"{time_eval(source, eval_spec, most):.1f} views/s")
  if FLAGS.train_steps:
    print(f"train.py --config=configs/ucf101.py:tiny_model ({FLAGS.train_steps} steps of "
          f"batch 8; medians of the logged rows after the first):")
    for workers, name in ((0, "num_workers=0"), (-1, "num_workers=-1 (default)")):
      rate, wait = train_end_to_end(FLAGS.train_steps, workers)
      print(f"  {name:26s} {rate:6.1f} clips/s, waiting for data {wait:4.0%} of the time")
  single = rows.get(0, rows[most])
  print(f"loader: {single[1]:.1f} clips/s per core at 16x224x224, {single[2]:.2f} MB read "
        f"per clip")


if __name__ == "__main__":
  app.run(main)
