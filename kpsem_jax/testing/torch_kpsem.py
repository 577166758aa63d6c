"""PyTorch KPSEM and MF-KPSEM: a transliteration of ``kpsem_jax.models.arese`` and ``kpsem``.

Test-only (torch 2.13.0 CPU), batched and channels-first like the PyTorch MFNet, without
the JAX code's vmaps: every op carries explicit batch and set axes. It repeats every
interpretive choice of ``arese.py`` (softmax/cumsum splits, sigmoid masks, the range + 1
penalty, V as the penalised score, the sum over K, the pooled MLP input), so it catches
framework, vmap and indexing bugs, not a misreading of the paper; the paper's printed
equations are ``paper_arese.py``'s. Parameters come from a kpsem-jax ``kpsem`` parameter
tree (numpy arrays), so the two frameworks are compared on the same weights.
"""

import numpy as np
import torch
from torch import nn

from kpsem_jax.testing.torch_mfnet import MFNET_3D


def _pixel_coords(n):
  return (2.0 * torch.arange(n, dtype=torch.float32) + 1.0) / n - 1.0


def _splits(logits):
  """(..., k-1) logits -> ordered split lines in (-1, 1)."""
  zeros = torch.zeros(logits.shape[:-1] + (1,))
  widths = torch.softmax(torch.cat([zeros, logits], -1), -1)
  return -1.0 + 2.0 * torch.cumsum(widths, -1)[..., :-1]


def _intervals(n, splits, temperature):
  """(..., k-1) splits -> (..., k, n) soft memberships."""
  right_of = torch.sigmoid((_pixel_coords(n) - splits[..., None]) / (temperature * 2.0 / n))
  ones = torch.ones(splits.shape[:-1] + (1, n))
  return torch.cat([ones, right_of], -2) - torch.cat([right_of, torch.zeros_like(ones)], -2)


class KPSEM(nn.Module):
  """``(B, C, T, H, W) -> (B, (T-1) * C_red)``; adaptive regions, soft masks.

  ``match_gradient="paper"``: autograd differentiates everything but the argmax indices
  (our soft-mask forward as PyTorch would train it); ``"splits"``: the features and the
  soft-mask penalty enter the key point scores detached, the masks do not; ``"stopped"``:
  the key point values enter Eq. 9's match weights detached, and the penalty is detached. The centre MLP's and the
  embedding's tensors are leaves with ``requires_grad``; ``parameter_grads()`` returns their
  gradients and the reduction convolutions' in the JAX parameter layout.
  """

  def __init__(self, params, num_regions=4, temperature=0.1, epsilon=0.1,
               match_gradient="paper"):  # the module's default is "splits"
    super().__init__()
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy()).requires_grad_()  # noqa: E731
    self.k = int(round(num_regions ** 0.5))
    self.temperature, self.epsilon = temperature, epsilon
    if match_gradient not in ("paper", "splits", "stopped"):
      raise ValueError(f"match_gradient: 'paper', 'splits' or 'stopped', not {match_gradient!r}")
    self.match_gradient = match_gradient
    self.w1, self.b1 = t(params["mlp_w1"]), t(params["mlp_b1"])  # (G, C, hid), (G, hid)
    self.w2, self.b2 = t(params["mlp_w2"]), t(params["mlp_b2"])  # (G, hid, 2(k-1)), (G, 2(k-1))
    self.ew, self.eb = t(params["embed_w"]), t(params["embed_b"])  # (G, 2, d), (G, d)
    self.reduce = nn.ModuleList()
    i = 1
    while f"reduce{i}" in params:
      kernel = t(params[f"reduce{i}"]["kernel"])  # (1, 3, C_in, C_out): HWIO
      conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], (1, 3), stride=(1, 2), padding=(0, 1))
      with torch.no_grad():
        conv.weight.copy_(kernel.permute(3, 2, 0, 1))
        conv.bias.copy_(t(params[f"reduce{i}"]["bias"]))
      self.reduce.append(conv)
      i += 1

  def forward(self, x):
    f = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    b, t, h, w, c = f.shape
    k = self.k
    pooled = f.mean(dim=(2, 3))  # (B, T, C)
    hidden = torch.relu(torch.einsum("btc,gch->gbth", pooled, self.w1) + self.b1[:, None, None])
    logits = torch.einsum("gbth,gho->gbto", hidden, self.w2) + self.b2[:, None, None]
    logits = logits.reshape(self.w1.shape[0], b, t, 2, k - 1)  # (G, B, T, 2, k-1)
    mx = _intervals(w, _splits(logits[..., 0, :]), self.temperature)  # (G, B, T, k, W)
    my = _intervals(h, _splits(logits[..., 1, :]), self.temperature)  # (G, B, T, k, H)
    masks = (my[:, :, :, :, None, :, None] * mx[:, :, :, None, :, None, :]).reshape(
        -1, b, t, k * k, h * w)  # (G, B, T, K, HW), row-major regions

    flat = f.reshape(1, b, t, 1, h * w, c)
    span = flat.amax(4) - flat.amin(4) + 1.0  # (1, B, T, 1, C)
    if self.match_gradient != "paper":
      span = span.detach()
    scored_features = flat.detach() if self.match_gradient == "splits" else flat
    scored = scored_features - (1.0 - masks[..., None]) * span[:, :, :, :, None, :]  # (G, B, T, K, HW, C)
    idx = scored.argmax(4)  # (G, B, T, K, C); first maximum on ties, as jnp.argmax
    values = torch.gather(scored, 4, idx[:, :, :, :, None, :])[:, :, :, :, 0, :]
    coords = torch.stack([_pixel_coords(w)[idx % w], _pixel_coords(h)[idx // w]], -1)

    delta = coords[:, :, 1:, None] - coords[:, :, :-1, :, None]  # (G, B, T-1, Ka, Kb, C, 2)
    if self.match_gradient == "stopped":
      values = values.detach()
    affinity = 1.0 / ((values[:, :, :-1, :, None] - values[:, :, 1:, None]).abs() + self.epsilon)
    shifts = (torch.softmax(affinity, 4)[..., None] * delta).sum(4)  # (G, B, T-1, K, C, 2)

    sums = torch.einsum("gbtkp,btpc->gbtkc", masks, f.reshape(b, t, h * w, c))
    means = sums / (masks.sum(-1)[..., None] + 1e-6)
    region_w = torch.softmax(0.5 * (means[:, :, :-1] + means[:, :, 1:]), 3)  # (G, B, T-1, K, C)
    rkps = (region_w[..., None] * shifts).sum(3)  # (G, B, T-1, C, 2)

    embedded = torch.einsum("gbtco,god->gbtcd", rkps, self.ew) + self.eb[:, None, None, None]
    out = embedded.sum(0).permute(0, 2, 1, 3)  # (B, C, T-1, d_e)
    for conv in self.reduce:
      out = torch.relu(conv(out))
    return out.mean(3).permute(0, 2, 1).reshape(b, -1)  # (B, (T-1) * C_red), time-major

  def parameter_grads(self):
    """Gradients after ``backward()``, named and shaped as the JAX ``kpsem`` parameters."""
    grads = {name: getattr(self, attr).grad.numpy() for name, attr in (
        ("mlp_w1", "w1"), ("mlp_b1", "b1"), ("mlp_w2", "w2"), ("mlp_b2", "b2"),
        ("embed_w", "ew"), ("embed_b", "eb"))}
    for i, conv in enumerate(self.reduce, 1):
      grads[f"reduce{i}"] = {"kernel": conv.weight.grad.permute(2, 3, 1, 0).numpy(),
                             "bias": conv.bias.grad.numpy()}
    return grads


class MF_KPSEM(MFNET_3D):
  """MFNet-3D with KPSEM on conv4's output: ``Linear(concat(pooled, KPSEM(conv4)))``."""

  def __init__(self, kpsem_params, classifier, num_regions=4, **mfnet_kwargs):
    super().__init__(**mfnet_kwargs)
    self.kpsem = KPSEM(kpsem_params, num_regions)
    kernel = np.asarray(classifier["kernel"], np.float32)  # (C_in, classes)
    self.classifier = nn.Linear(kernel.shape[0], kernel.shape[1])
    with torch.no_grad():
      self.classifier.weight.copy_(torch.from_numpy(kernel.T.copy()))
      self.classifier.bias.copy_(torch.from_numpy(np.array(classifier["bias"], np.float32)))

  def forward(self, x):
    c4 = self.conv4(self.conv3(self.conv2(self.maxpool(self.conv1(x)))))
    pooled = torch.mean(self.tail(self.conv5(c4)), dim=(2, 3, 4))
    return self.classifier(torch.cat([pooled, self.kpsem(c4)], 1))
