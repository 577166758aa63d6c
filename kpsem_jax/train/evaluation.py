"""Video-level evaluation: softmax scores averaged over all views of a video (numpy, pure).

``aggregate`` turns per-view logits into per-video probabilities; ``video_metrics`` gives
top-1/top-5 accuracy, per-class accuracy and the confusion matrix (rows: true class,
columns: predicted); ``confusion_png`` draws it.
"""

import json
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
                  cell: int = 0, title: str = "") -> None:
  """The confusion matrix as a PNG a reader can read alone: rows the true classes (named,
  ``index: name``), columns the predicted ones (indexed), each cell shaded white-to-blue by
  its share of its row and, where cells are large enough, its count; axis titles, a title
  and a colour bar. The PNG's text chunks hold ``title``, ``class_names`` and ``counts``
  (JSON), so tools can read it back."""
  from PIL import Image, ImageDraw, PngImagePlugin  # pylint: disable=import-outside-toplevel
  n = matrix.shape[0]
  names = [f"{i}: {name}" for i, name in enumerate(class_names)] or [str(i) for i in range(n)]
  cell = cell or max(4, min(40, 800 // max(n, 1)))
  rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)

  def shade(share):
    return (int(255 * (1 - share)), int(255 * (1 - 0.6 * share)), 255)

  left = 12 + 6 * max(len(x) for x in names) if cell >= 8 else 12
  top, bar = 44, 40
  width, height = left + n * cell + 10, top + n * cell + bar
  image = Image.new("RGB", (max(width, left + 300), height), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  draw.text((4, 2), title or "confusion matrix (rows: true class, share of the row)",
            fill=(0, 0, 0))
  draw.text((4, top - 26), "true class", fill=(0, 0, 0))
  draw.text((left, top - 26), "predicted class ->", fill=(0, 0, 0))
  for i in range(n):
    for j in range(n):
      x, y = left + j * cell, top + i * cell
      draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade(rows[i, j]))
      if cell >= 20 and matrix[i, j]:
        draw.text((x + 2, y + cell // 2 - 5), str(int(matrix[i, j])),
                  fill=(255, 255, 255) if rows[i, j] > 0.6 else (0, 0, 0))
    if cell >= 8:
      draw.text((4, top + i * cell + max(0, cell // 2 - 5)), names[i], fill=(0, 0, 0))
      draw.text((left + i * cell + 2, top - 12), str(i), fill=(0, 0, 0))
  y = top + n * cell + 10
  for k in range(100):  # the colour bar: 0% .. 100% of a row
    draw.rectangle([left + 2 * k, y, left + 2 * k + 1, y + 10], fill=shade(k / 99))
  draw.text((left, y + 12), "0%", fill=(0, 0, 0))
  draw.text((left + 200 + 4, y), "100% of the row", fill=(0, 0, 0))
  info = PngImagePlugin.PngInfo()
  info.add_text("title", title or "confusion matrix")
  info.add_text("class_names", json.dumps(list(class_names)))
  info.add_text("counts", json.dumps(np.asarray(matrix).astype(int).tolist()))
  image.save(path, pnginfo=info)


def write_eval_files(metrics: Dict[str, np.ndarray], base: str, class_names: Sequence[str],
                     step: int, split: str) -> None:
  """``base.json`` (the metrics, per-class accuracy by name), ``base_confusion.csv`` and
  ``base_confusion.png``."""
  summary = {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}
  summary["per_class_accuracy"] = {
      name: (None if np.isnan(a) else float(a))
      for name, a in zip(class_names, metrics["per_class_accuracy"])}
  with open(base + ".json", "w") as f:
    json.dump(dict(summary, step=step, class_names=list(class_names)), f, indent=1)
  np.savetxt(base + "_confusion.csv", metrics["confusion"], fmt="%d", delimiter=",")
  confusion_png(metrics["confusion"], base + "_confusion.png", class_names,
                title=f"{split} split, step {step}: confusion matrix")
