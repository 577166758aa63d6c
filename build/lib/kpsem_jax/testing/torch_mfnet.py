"""PyTorch MFNet-3D written from ../shared/reference/NOTES.md, with the original key names.

Test-only reference (torch 2.13.0 CPU). With the defaults its ``state_dict`` equals the
released 400-class model's key list; widths and depths are arguments only so that tests
can build narrow variants of the same network.
"""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


class BN_AC_CONV3D(nn.Module):
  def __init__(self, num_in, num_filter, kernel=(1, 1, 1), pad=(0, 0, 0), stride=(1, 1, 1),
               g=1):
    super().__init__()
    self.bn = nn.BatchNorm3d(num_in)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv3d(num_in, num_filter, kernel_size=kernel, padding=pad, stride=stride,
                          groups=g, bias=False)

  def forward(self, x):
    return self.conv(self.relu(self.bn(x)))


class MF_UNIT(nn.Module):
  def __init__(self, num_in, num_mid, num_out, g=1, stride=(1, 1, 1), first_block=False):
    super().__init__()
    num_ix = num_mid // 4
    self.conv_i1 = BN_AC_CONV3D(num_in, num_ix)
    self.conv_i2 = BN_AC_CONV3D(num_ix, num_in)
    self.conv_m1 = BN_AC_CONV3D(num_in, num_mid, kernel=(3, 3, 3), pad=(1, 1, 1), stride=stride,
                                g=g)
    if first_block:
      self.conv_m2 = BN_AC_CONV3D(num_mid, num_out)
      self.conv_w1 = BN_AC_CONV3D(num_in, num_out, stride=stride)
    else:
      self.conv_m2 = BN_AC_CONV3D(num_mid, num_out, kernel=(1, 3, 3), pad=(0, 1, 1), g=g)
    self.first_block = first_block

  def forward(self, x):
    h = self.conv_i1(x)
    x_in = x + self.conv_i2(h)
    h = self.conv_m2(self.conv_m1(x_in))
    if self.first_block:
      x = self.conv_w1(x)
    return h + x


class MFNET_3D(nn.Module):
  def __init__(self, num_classes=400, conv1_channels=16, stage_channels=(96, 192, 384, 768),
               stage_depths=(3, 4, 6, 3), groups=16):
    super().__init__()
    self.conv1 = nn.Sequential(OrderedDict([
        ("conv", nn.Conv3d(3, conv1_channels, kernel_size=(3, 5, 5), padding=(1, 2, 2),
                           stride=(1, 2, 2), bias=False)),
        ("bn", nn.BatchNorm3d(conv1_channels)),
        ("relu", nn.ReLU(inplace=True))]))
    self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    num_in = conv1_channels
    for s, (out, depth) in enumerate(zip(stage_channels, stage_depths)):
      stride = (2, 1, 1) if s == 0 else (1, 2, 2)
      units = []
      for i in range(depth):
        units.append((f"B{i + 1:02d}", MF_UNIT(num_in if i == 0 else out, out, out, g=groups,
                                               stride=stride if i == 0 else (1, 1, 1),
                                               first_block=i == 0)))
      setattr(self, f"conv{s + 2}", nn.Sequential(OrderedDict(units)))
      num_in = out
    self.tail = nn.Sequential(OrderedDict([("bn", nn.BatchNorm3d(num_in)),
                                           ("relu", nn.ReLU(inplace=True))]))
    self.classifier = nn.Linear(num_in, num_classes)

  def forward(self, x):
    h = self.maxpool(self.conv1(x))
    h = self.conv5(self.conv4(self.conv3(self.conv2(h))))
    h = self.tail(h)
    h = torch.mean(h, dim=(2, 3, 4))  # AvgPool3d over the whole (8, 7, 7) map at 16x224x224
    return self.classifier(h)


def randomize(model, seed=0):
  """Random weights and non-trivial BatchNorm statistics (not 0/1), in place."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm3d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=g))
        module.bias.copy_(0.2 * torch.randn(n, generator=g))
        module.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        module.running_var.copy_(0.5 + torch.rand(n, generator=g))
        module.num_batches_tracked.fill_(1000)
      elif isinstance(module, (nn.Conv3d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
  return model


# A narrow MFNet that runs fast on a CPU: the converter and KPSEM parity tests' network.
TINY = dict(conv1_channels=8, stage_channels=(16, 16, 32, 32), stage_depths=(1, 1, 2, 1), groups=4)


def save(state_dict, path, legacy=False, wrap=False, module_prefix=False, drop_counters=False):
  sd = {k: v for k, v in state_dict.items()
        if not (drop_counters and k.endswith("num_batches_tracked"))}
  if module_prefix:
    sd = {f"module.{k}": v for k, v in sd.items()}
  obj = {"epoch": 10, "state_dict": sd} if wrap else sd
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return path


def relative_error(jax_logits, torch_logits):
  return float(np.abs(jax_logits - torch_logits).max() / np.abs(torch_logits).max())


def torch_logits(net, clips_nthwc):
  with torch.no_grad():
    return net.eval()(torch.from_numpy(np.ascontiguousarray(
        np.asarray(clips_nthwc).transpose(0, 4, 1, 2, 3)))).numpy()
