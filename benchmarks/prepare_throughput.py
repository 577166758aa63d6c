"""``prepare``'s speed per number of worker processes, and what it means for each dataset.

    python benchmarks/prepare_throughput.py [--workers=1,2] [--beam_workers=2] [--copies=6]

Lays the real fixture videos (../shared/fixtures: 127-310 frames of 320x240 to 426x240
AVI/MP4/MKV) out ``--copies`` times as a ``video_folder`` source, builds it from scratch
with each worker count (decode with PyAV, resize to the 256-px short side, JPEG-encode,
write the frame files and shards), and prints videos/s and frames/s, the speed-up over one
worker (rows ``beam N``: the same build as an Apache Beam pipeline on the DirectRunner
with N worker processes, when apache-beam is installed), the machine's own ceiling for that (the same work in independent processes, side
by side), and the hours that HMDB51, UCF101, Mini-Kinetics and Kinetics-400 would take at
the measured per-core rate on this machine's cores and on 32 and 256 cores (a cluster's
total). Frame counts of the datasets: FRAMES below.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from kpsem_jax.data import prepare as prepare_lib
from kpsem_jax.host import usable_cores

flags.DEFINE_list("workers", ["1", "2"], "worker counts to time")
flags.DEFINE_list("beam_workers", ["2"], "DirectRunner worker counts to time (needs "
                  "requirements-beam.txt; empty: none)")
flags.DEFINE_integer("copies", 6, "copies of each fixture video in the source folder")
FLAGS = flags.FLAGS
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "videos")
# Approximate decoded frames of each dataset (videos x mean frames), for the projections.
FRAMES = {"HMDB51 (6,766 videos)": 6766 * 95, "UCF101 (13,320)": 13320 * 187,
          "Mini-Kinetics (85,000)": 85000 * 290, "Kinetics-400 (240,000)": 240000 * 290}


def source_folder(root: str) -> str:
  """``--copies`` of every fixture video, one class folder per video."""
  src = os.path.join(root, "src")
  for name in sorted(os.listdir(FIXTURES)):
    if not name.endswith((".avi", ".mp4", ".mkv")):
      continue
    folder = os.path.join(src, os.path.splitext(name)[0])
    os.makedirs(folder, exist_ok=True)
    for copy in range(FLAGS.copies):
      shutil.copy(os.path.join(FIXTURES, name), os.path.join(folder, f"{copy}_{name}"))
  return src


def build(src: str, root: str, workers: int, beam: bool = False):
  data_dir = os.path.join(root, f"tfds_{workers}_{beam}")
  options = (f"--runner=DirectRunner --direct_running_mode=multi_processing "
             f"--direct_num_workers={workers}") if beam else None
  start = time.perf_counter()
  builder, skipped = prepare_lib.prepare("video_folder", data_dir, source_dir=src,
                                         test_fraction=0.0, workers=workers,
                                         log=lambda *a: None, beam_options=options)
  seconds = time.perf_counter() - start
  assert not skipped, skipped
  splits = builder.info.splits
  videos = sum(s.num_examples for s in splits.values())
  source = builder.as_data_source("train")
  frames = sum(int(source[i]["num_frames"]) for i in range(len(source)))
  shutil.rmtree(data_dir)
  return videos, frames, seconds


CEILING = """
import os, sys, time
from kpsem_jax.data import video_builder
folder = sys.argv[1]
items = [video_builder.Item(n, os.path.join(folder, n), 0) for n in sorted(os.listdir(folder))
         if n.endswith((".avi", ".mp4", ".mkv"))]
for item in items * 2:
  video_builder.video_example(item, 256)
"""


def machine_ceiling(processes: int) -> float:
  """How much faster ``processes`` independent processes, each decoding and encoding every
  fixture video once (no pool, nothing shared), finish together than one alone: what this
  machine's cores give such work, the bound for any worker count."""
  repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

  def run(n):
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CEILING, FIXTURES], cwd=repo)
             for _ in range(n)]
    for p in procs:
      p.wait()
    return time.perf_counter() - start

  run(1)  # warm the page cache and imports
  alone = min(run(1) for _ in range(3))
  together = min(run(processes) for _ in range(3))
  return processes * alone / together


def main(_):
  from kpsem_jax import jax_options  # pylint: disable=import-outside-toplevel
  jax_options.configure()  # before JAX starts
  logging.set_verbosity(logging.ERROR)
  cores = usable_cores()
  with tempfile.TemporaryDirectory() as root:
    src = source_folder(root)
    print(f"{cores} cores; the fixture videos x {FLAGS.copies} at a 256-px short side")
    print(f"{'workers':>7s} {'videos':>6s} {'frames':>7s} {'seconds':>8s} {'videos/s':>9s} "
          f"{'frames/s':>9s} {'per worker':>11s} {'vs 1':>6s}")
    rates = {}
    for w in (int(x) for x in FLAGS.workers):
      videos, frames, seconds = build(src, root, w)
      rates[w] = frames / seconds
      speedup = f"{rates[w] / rates[1]:.2f}x" if 1 in rates else "-"
      print(f"{w:7d} {videos:6d} {frames:7d} {seconds:8.2f} {videos / seconds:9.2f} "
            f"{frames / seconds:9.1f} {frames / seconds / w:11.1f} {speedup:>6s}")
    beam_counts = [int(x) for x in FLAGS.beam_workers]
    if beam_counts and importlib.util.find_spec("apache_beam") is None:
      print("beam rows left out: apache-beam is not installed (requirements-beam.txt)")
      beam_counts = []
    for w in beam_counts:
      videos, frames, seconds = build(src, root, w, beam=True)
      speedup = f"{frames / seconds / rates[1]:.2f}x" if 1 in rates else "-"
      print(f"{f'beam {w}':>7s} {videos:6d} {frames:7d} {seconds:8.2f} "
            f"{videos / seconds:9.2f} {frames / seconds:9.1f} {frames / seconds / w:11.1f} "
            f"{speedup:>6s}")
  most = max(rates)
  if most > 1:
    print(f"the machine's ceiling: {most} independent processes doing the same decoding and "
          f"encoding finish {machine_ceiling(most):.2f}x as fast as one")
  per_core = max(rates[w] / w for w in rates)
  print(f"projected hours at {per_core:.0f} frames/s per core:")
  print(f"  {'dataset':26s} {'frames':>11s} {f'{cores} cores':>9s} {'32 cores':>9s} "
        f"{'256 cores':>10s}")
  for name, frames in FRAMES.items():
    hours = [frames / (per_core * n) / 3600 for n in (cores, 32, 256)]
    print(f"  {name:26s} {frames:11,d} {hours[0]:9.1f} {hours[1]:9.2f} {hours[2]:10.3f}")


if __name__ == "__main__":
  app.run(main)
