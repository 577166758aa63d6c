"""Video decoding with PyAV: the one place videos are read (``prepare``, ``predict``).

``read_video`` survives real-world files: non-UTF-8 container metadata, header frame counts
that are wrong or zero (frames are counted by decoding), zero-size packets, single-keyframe
AVIs, audio streams beside the video.
"""

from typing import Dict, Iterator, Optional

import av
import numpy as np


class VideoError(Exception):
  """A video that cannot be used, with the file named in the message."""


class TruncatedVideoError(VideoError):
  """A video whose decoding ended well short of the frames its container promises."""


def resized_size(width: int, height: int, short_side: Optional[int]):
  """``(width, height)`` with the short side at ``short_side``, even sizes; None: unchanged."""
  if not short_side:
    return width, height
  scale = short_side / min(width, height)
  return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def read_video(path: str, short_side: Optional[int] = 256, with_info: bool = False,
               threads: bool = True):
  """All frames of the first video stream, RGB uint8 ``(N, H, W, 3)``.

  ``short_side`` resizes (keeping the aspect ratio, even sizes) while decoding; None keeps
  the original size. ``with_info=True`` also returns ``{"fps", "width", "height",
  "expected_frames"}`` of the source: fps 0 when the container does not say; the frame count
  the container promises (its header's, else duration x fps; 0 when it says neither).
  ``threads=False`` decodes on one thread (``prepare``'s worker processes: with the
  decoder's own threads, 2 processes on 2 cores built 1.67x one process's frames/s; on
  one thread each, 1.92x).
  """
  info: Dict = {}
  frames = np.stack(list(stream_frames(path, short_side, info, threads)))
  return (frames, info) if with_info else frames


def stream_frames(path: str, short_side: Optional[int] = 256,
                  info: Optional[Dict] = None, threads: bool = True) -> Iterator[np.ndarray]:
  """The frames of :func:`read_video` one at a time, so a long video never sits in memory;
  ``info`` (a dict) is filled with the source's ``fps`` etc. before the first frame."""
  info = {} if info is None else info
  try:
    container = av.open(path, metadata_errors="ignore")
  except (av.error.FFmpegError, OSError) as e:
    # FFmpeg's own words, without its error number and the path the message already names
    raise VideoError(f"{path}: cannot open as a video "
                     f"({getattr(e, 'strerror', None) or e})") from None
  decoded = 0
  with container:
    if not container.streams.video:
      raise VideoError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO" if threads else "NONE"
    rate = stream.average_rate or stream.guessed_rate
    info.update(fps=float(rate) if rate else 0.0, width=0, height=0,
                expected_frames=_expected_frames(container, stream, rate))
    try:
      for frame in container.decode(stream):
        info["width"], info["height"] = frame.width, frame.height
        if short_side:
          width, height = resized_size(frame.width, frame.height, short_side)
          frame = frame.reformat(width=width, height=height, format="rgb24")
        decoded += 1
        yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
      if not decoded:
        raise VideoError(f"{path}: cannot decode ({e})") from None
      # A damaged tail: the frames decoded so far stand.
  if not decoded:
    raise VideoError(f"{path}: no decodable video frames")


def _expected_frames(container, stream, rate) -> int:
  if stream.frames:
    return int(stream.frames)
  seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
             else (container.duration / 1e6 if container.duration else 0.0))
  return int(round(seconds * float(rate))) if rate and seconds > 0 else 0


def check_complete(path: str, decoded: int, expected: int) -> None:
  """Raises VideoError when decoding ended well short of what the container promised
  (a truncated download or a damaged file): more than 5% and 1 frame fewer."""
  if expected and decoded < 0.95 * expected - 1:
    raise TruncatedVideoError(f"{path}: decoded {decoded} of ~{expected} frames (truncated "
                              "or damaged file)")
