"""Video classifiers: a backbone, an optional KPSEM branch, and a linear classifier.

``logits = Dense(concat(F_out, P_out))`` (Eq. 1): ``F_out`` is the backbone's pooled
feature and ``P_out`` KPSEM's temporal feature taken from the stage ``kpsem_at``; without
KPSEM this is the plain backbone baseline. Parameter paths: ``backbone/...`` (for MFNet
exactly the PyTorch key names), ``kpsem/...``, ``classifier/{kernel,bias}``.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from kpsem_jax import jax_options
from kpsem_jax.models import arese, layers
from kpsem_jax.models.kpsem import KPSEM
from kpsem_jax.models.mfnet3d import MFNet3D
from kpsem_jax.models.resnet3d import ResNet3D

BACKBONES = {"mfnet3d": MFNet3D, "resnet3d": ResNet3D}

# MFNet's input normalisation: pixels in [0, 1], minus the mean, divided by one std for all
# channels. Every model here takes clips normalised so.
MEAN = np.array([124.0, 117.0, 104.0], np.float32) / 255.0
STD = 1.0 / (0.0167 * 255.0)


def normalize(clips) -> jax.Array:
  """uint8 RGB ``(..., 3)`` in [0, 255] -> float32 as MFNet expects."""
  return (jax.numpy.asarray(clips, jax.numpy.float32) / 255.0 - MEAN) / STD


READOUTS = ("mean", "ordered")


class VideoClassifier(nn.Module):
  """``(B, T, H, W, 3)`` normalised clips -> ``(B, num_classes)`` logits.

  ``readout``: the backbone feature the classifier reads: ``mean``, the globally averaged
  last map (the backbones' own); ``ordered``, the last map averaged over space only and its
  T' frames concatenated in time order (``(B, T' * C)``), a frame-order-aware readout (the
  control beside KPSEM in the experiment suite)."""
  backbone: nn.Module
  num_classes: int
  kpsem: Optional[KPSEM] = None
  kpsem_at: str = "conv4"
  readout: str = "mean"

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.classify(self.features(x, train))

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """``V_out``: ``(B, C_s [+ C_p])``."""
    return self.combine(self.backbone(x, train))

  def stages(self, x: jax.Array, train: bool = False):
    """The backbone's stage outputs (``{"conv1": (B, T, H, W, C), ..., "pooled": (B, C)}``)."""
    return self.backbone(x, train)

  def combine(self, stages) -> jax.Array:
    """``V_out`` from the backbone's stage outputs: pooled feature [+ KPSEM on ``kpsem_at``]."""
    if self.readout == "ordered":
      last = stages["last"]  # (B, T', H', W', C)
      pooled = jax.numpy.mean(last, axis=(2, 3)).reshape(last.shape[0], -1)
      stages = dict(stages, pooled=pooled)
    if self.kpsem is None:
      return stages["pooled"]
    if self.kpsem_at not in stages:
      raise ValueError(f"kpsem_at={self.kpsem_at!r} is not a stage of the backbone; "
                       f"choose one of {sorted(k for k in stages if k not in ('pooled', 'last'))}")
    p_out = self.kpsem(stages[self.kpsem_at])
    return jax.numpy.concatenate([stages["pooled"], p_out.astype(stages["pooled"].dtype)], -1)

  @nn.compact
  def classify(self, v_out: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes, name="classifier")(v_out)


def complete_spec(spec: Mapping[str, Any]) -> Dict[str, Any]:
  """``spec`` (``create_model``'s keyword arguments) with every backbone field the
  backbone's default leaves unsaid written out, so that two specs of the same model
  compare equal however much of the default they spell."""
  spec = dict(spec)
  backbone = BACKBONES.get(spec.get("backbone", "mfnet3d"))
  if backbone is not None:
    defaults = {f.name: f.default for f in dataclasses.fields(backbone)
                if f.name not in ("conv_strategy", "batch_norm_axis", "cpu_kernels", "parent",
                                  "name")
                and f.default is not dataclasses.MISSING}
    given = dict(spec.get("backbone_kwargs") or {})
    spec["backbone_kwargs"] = {k: tuple(v) if isinstance(v, list) else v
                               for k, v in dict(defaults, **given).items()}
  return spec


def create_model(backbone: str = "mfnet3d", num_classes: int = 400,
                 backbone_kwargs: Optional[Mapping[str, Any]] = None,
                 kpsem: Optional[Mapping[str, Any]] = None,
                 kpsem_at: str = "conv4", conv_strategy: str = "auto",
                 batch_norm_axis: Optional[str] = None, readout: str = "mean",
                 cpu_kernels: Optional[bool] = None) -> VideoClassifier:
  """Builds a classifier; ``kpsem=None`` is the plain backbone, a dict KPSEM's settings.

  ``create_model("mfnet3d", 400)`` is the original MFNet-3D (7,996,368 parameters);
  ``create_model("mfnet3d", 51, kpsem={})`` is the paper's MF-KPSEM (K=4, G=8, d_e=24,
  after conv4); ``create_model("resnet3d", 51, kpsem={}, kpsem_at="res3")`` R3D-KPSEM.

  ``conv_strategy`` (``layers.STRATEGIES``) computes every convolution, KPSEM's included.
  ``cpu_kernels``: whether BatchNorm's sums, the 3-D max-pool gradient and AReSE's regional
  argmax run :mod:`kpsem_jax.models.cpu_kernels` (C++); None (the default): where the
  convolutions do (``onednn``, or ``auto`` on a CPU where they are built), so a pure-XLA
  strategy gives a pure-XLA model. The layers take this one decision, never
  ``conv_strategy``.
  ``batch_norm_axis``: the mesh axis whose devices share BatchNorm statistics in training
  under ``jax.shard_map`` (the trainer's ``"data"``); None for one device's batch.
  """
  if backbone not in BACKBONES:
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
  if conv_strategy not in layers.STRATEGIES:
    raise ValueError(f"unknown conv_strategy {conv_strategy!r}; choose one of "
                     f"{layers.STRATEGIES}")
  if readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; choose one of {READOUTS}")
  # Decided here, once: the layers see a concrete strategy (no backend query per call).
  conv_strategy = layers.resolve_conv_strategy(conv_strategy)
  kwargs = dict(backbone_kwargs or {})
  if {"conv_strategy", "batch_norm_axis", "cpu_kernels"} & set(kwargs):
    raise ValueError("pass conv_strategy, batch_norm_axis and cpu_kernels to create_model, "
                     "not in backbone_kwargs")
  if cpu_kernels is None:
    cpu_kernels = layers.uses_cpu_kernels(conv_strategy)
  kpsem_kwargs = None
  if kpsem is not None:
    gradient = dict(kpsem).get("match_gradient", "splits")
    if gradient not in arese.MATCH_GRADIENTS:
      raise ValueError(f"unknown model.kpsem.match_gradient {gradient!r}; choose one of "
                       f"{arese.MATCH_GRADIENTS}")
    if dict(kpsem).get("num_sets", 8) == 1:
      jax_options.require_ynn_fusions_off("KPSEM with one AReSE set (num_sets=1)")
    kpsem_kwargs = dict(dict(kpsem), conv_strategy=conv_strategy,
                        argmax_strategy="cpu_kernel" if cpu_kernels else "jnp")
  return VideoClassifier(
      backbone=BACKBONES[backbone](**kwargs, conv_strategy=conv_strategy,
                                   batch_norm_axis=batch_norm_axis, cpu_kernels=bool(cpu_kernels)),
      num_classes=num_classes,
      kpsem=None if kpsem_kwargs is None else KPSEM(**kpsem_kwargs),
      kpsem_at=kpsem_at, readout=readout)
