"""Video-level evaluation: softmax scores averaged over all views of a video (numpy, pure).

``aggregate`` turns per-view logits into per-video probabilities; ``video_metrics`` gives
top-1/top-5 accuracy, per-class accuracy and the confusion matrix (rows: true class,
columns: predicted); ``confusion_png`` draws it.
"""

from typing import Dict, Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def aggregate(logits: np.ndarray, video_index: np.ndarray, labels: np.ndarray):
  """Per-view ``logits (N, C)`` -> ``(video ids, mean softmax (V, C), labels (V,))``."""
  videos, inverse = np.unique(video_index, return_inverse=True)
  probs = np.zeros((len(videos), logits.shape[-1]))
  np.add.at(probs, inverse, softmax(logits.astype(np.float64)))
  probs /= np.bincount(inverse)[:, None]
  video_labels = np.zeros(len(videos), np.int64)
  video_labels[inverse] = labels
  return videos, probs, video_labels


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def video_metrics(logits: np.ndarray, video_index: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> Dict[str, object]:
  """Video-level metrics from per-view logits (views of a video share ``video_index``)."""
  _, probs, video_labels = aggregate(logits, video_index, labels)
  matrix = confusion_matrix(probs.argmax(-1), video_labels, num_classes)
  support = matrix.sum(axis=1)
  per_class = np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)
  return {"video_top1": top_k_accuracy(probs, video_labels, 1),
          "video_top5": top_k_accuracy(probs, video_labels, min(5, num_classes)),
          "clip_top1": float(np.mean(logits.argmax(-1) == labels)),
          "num_videos": int(len(video_labels)), "num_views": int(len(labels)),
          "per_class_accuracy": per_class, "confusion": matrix}


def confusion_png(matrix: np.ndarray, path: str, class_names: Sequence[str] = (),
                  cell: int = 0) -> None:
  """The row-normalised confusion matrix as a white-to-blue PNG (one cell per class pair)."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  n = matrix.shape[0]
  cell = cell or max(4, min(40, 800 // max(n, 1)))
  rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  rgb = np.stack([255 * (1 - rows), 255 * (1 - 0.6 * rows), np.full_like(rows, 255)], -1)
  image = Image.fromarray(np.kron(rgb, np.ones((cell, cell, 1))).astype(np.uint8))
  if class_names and cell >= 20:
    draw = ImageDraw.Draw(image)
    for i in range(n):
      draw.text((2, i * cell + 2), str(i), fill=(0, 0, 0))
  image.save(path)
