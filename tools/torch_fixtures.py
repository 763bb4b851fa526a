"""Writes the PyTorch checkpoints that tests/test_published.py converts, with their logits.

Needs PyTorch (and dill); the tests do not. Run from the repository root with a Python
that has them::

  /path/to/python-with-torch tools/torch_fixtures.py

Each fixture is a checkpoint laid out as its authors' code saves it, with random weights
and BatchNorm statistics far from 0 and 1, small where the real model is large, and the
logits PyTorch computes for fixed images saved beside it (``<name>.npz``: ``images`` in
NHWC, ``logits`` and, for Cohen et al.'s CIFAR-10 ResNet-20, ``logits_center``, the same
weights behind SmoothAdv's mean-only ``InputCenterLayer``):

* ``cohen_cifar_resnet20.pth.tar``: Cohen et al.'s ``cifar_resnet20`` behind their
  ``NormalizeLayer`` (``code/architectures.py`` and ``code/archs/cifar_resnet.py`` of
  locuslab/smoothing), ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` as their
  ``train.py`` saves it, in the legacy format of their 2019 files; and the same file in
  the zip format (``cohen_cifar_resnet20_zip.pth.tar``).
* ``cohen_resnet50_tiny.pth.tar``: torchvision's ResNet-50 (layout as in
  ``torchvision/models/resnet.py``, stage widths 8..64 instead of 64..512, 1000 classes)
  inside ``DataParallel`` behind ``NormalizeLayer``, as Cohen et al.'s ImageNet models.
* ``madry_cifar_resnet50_tiny.pt``: MadryLab ``robustness``'s CIFAR ResNet-50
  (``robustness/cifar_models/resnet.py``, widths 8..64) in their ``AttackerModel``
  inside ``DataParallel`` (keys ``module.normalizer.*``, ``module.model.*``,
  ``module.attacker.normalize.*``, ``module.attacker.model.*``), ``{'model', 'optimizer',
  'schedule', 'epoch', 'amp'}`` saved with ``pickle_module=dill`` as their ``train.py``
  does. Its images reach below 0 and above 1, where their ``InputNormalize`` clamps.
* ``consistency_lenet.pth.tar``: the LeNet of Jeong & Shin 2020 (``code/archs/lenet.py``
  of jh-jeong/smoothing-consistency) behind ``Identity`` (their MNIST normaliser).

The reader's own fixtures are made by tools/torch_reader_fixtures.py.
"""

from __future__ import annotations

import argparse
import os

import dill
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch", "models")

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class NormalizeLayer(nn.Module):  # Cohen et al., code/datasets.py (no .cuda())
  def __init__(self, means, sds):
    super().__init__()
    self.means = torch.tensor(means)
    self.sds = torch.tensor(sds)

  def forward(self, x):
    b, _, h, w = x.shape
    means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
    sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
    return (x - means) / sds


class InputCenterLayer(nn.Module):  # SmoothAdv, code/datasets.py
  def __init__(self, means):
    super().__init__()
    self.means = torch.tensor(means)

  def forward(self, x):
    b, _, h, w = x.shape
    return x - self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)


# Cohen et al.'s code/archs/cifar_resnet.py (from bearpaw/pytorch-classification).
class CifarBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(out + residual)


class CifarResNet(nn.Module):
  def __init__(self, depth, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = 16
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.relu = nn.ReLU(inplace=True)
    self.layer1 = self._make_layer(16, n)
    self.layer2 = self._make_layer(32, n, stride=2)
    self.layer3 = self._make_layer(64, n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(64, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
      )
    layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(self.avgpool(x).view(x.size(0), -1))


# torchvision/models/resnet.py's ResNet-50 (v1.5: the stride on the 3x3), of base width `base`.
class TvBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TvResNet50(nn.Module):
  def __init__(self, base=64, num_classes=1000):
    super().__init__()
    self.inplanes = base
    self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(base)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(base, 3)
    self.layer2 = self._make_layer(base * 2, 4, 2)
    self.layer3 = self._make_layer(base * 4, 6, 2)
    self.layer4 = self._make_layer(base * 8, 3, 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(base * 8 * 4, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
      )
    layers = [TvBottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * 4
    layers += [TvBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


# MadryLab robustness: cifar_models/resnet.py, tools/helpers.py, attacker.py.
class MadryBottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes * 4:
      self.shortcut = nn.Sequential(
        nn.Conv2d(in_planes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + self.shortcut(x))


class MadryResNet50(nn.Module):
  def __init__(self, base=64, num_classes=10):
    super().__init__()
    widths = [base, base * 2, base * 4, base * 8]
    self.in_planes = widths[0]
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.layer1 = self._make_layer(widths[0], 3, 1)
    self.layer2 = self._make_layer(widths[1], 4, 2)
    self.layer3 = self._make_layer(widths[2], 6, 2)
    self.layer4 = self._make_layer(widths[3], 3, 2)
    self.linear = nn.Linear(widths[3] * 4, num_classes)

  def _make_layer(self, planes, blocks, stride):
    layers = []
    for s in [stride] + [1] * (blocks - 1):
      layers.append(MadryBottleneck(self.in_planes, planes, s))
      self.in_planes = planes * 4
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    return self.linear(F.avg_pool2d(out, 4).view(out.size(0), -1))


class InputNormalize(nn.Module):
  def __init__(self, new_mean, new_std):
    super().__init__()
    self.register_buffer("new_mean", new_mean[..., None, None])
    self.register_buffer("new_std", new_std[..., None, None])

  def forward(self, x):
    return (torch.clamp(x, 0, 1) - self.new_mean) / self.new_std


class Attacker(nn.Module):
  def __init__(self, model, mean, std):
    super().__init__()
    self.normalize = InputNormalize(mean, std)
    self.model = model


class AttackerModel(nn.Module):
  def __init__(self, model, mean, std):
    super().__init__()
    self.normalizer = InputNormalize(mean, std)
    self.model = model
    self.attacker = Attacker(model, mean, std)

  def forward(self, x):
    return self.model(self.normalizer(x))


# jh-jeong/smoothing-consistency, code/archs/lenet.py.
class LeNet(nn.Module):
  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 20, 5, 1)
    self.conv2 = nn.Conv2d(20, 50, 5, 1)
    self.fc1 = nn.Linear(4 * 4 * 50, 500)
    self.fc2 = nn.Linear(500, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
    x = F.relu(self.fc1(x.view(-1, 4 * 4 * 50)))
    return self.fc2(x)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
  """BatchNorm statistics and affine parameters far from PyTorch's 0 and 1 defaults."""
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      c = m.num_features
      m.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
      m.running_var.copy_(0.3 + 2.5 * torch.rand(c, generator=generator))
      m.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
      m.bias.data.copy_(0.3 * torch.randn(c, generator=generator))
      m.num_batches_tracked.fill_(7812)


def images(generator: torch.Generator, shape, low=0.0, high=1.0) -> torch.Tensor:
  return low + (high - low) * torch.rand(shape, generator=generator)


def save_logits(name: str, x: torch.Tensor, **logits: torch.Tensor) -> None:
  arrays = {k: v.detach().numpy().astype(np.float32) for k, v in logits.items()}
  nhwc = x.permute(0, 2, 3, 1).numpy().astype(np.float32)
  np.savez(os.path.join(OUT, name + ".npz"), images=nhwc, **arrays)


@torch.no_grad()
def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  g = torch.Generator().manual_seed(2019)
  torch.manual_seed(2019)

  # Cohen et al.'s CIFAR-10 ResNet-20, legacy and zip formats.
  net = CifarResNet(20)
  randomize_batchnorm(net, g)
  model = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), net).eval()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  checkpoint = {
    "epoch": 90,
    "arch": "cifar_resnet20",
    "state_dict": model.state_dict(),
    "optimizer": optimizer.state_dict(),
  }
  path = os.path.join(OUT, "cohen_cifar_resnet20.pth.tar")
  torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
  torch.save(checkpoint, os.path.join(OUT, "cohen_cifar_resnet20_zip.pth.tar"))
  x = images(g, (4, 3, 32, 32))
  centered = nn.Sequential(InputCenterLayer(CIFAR_MEAN), net).eval()
  save_logits("cohen_cifar_resnet20", x, logits=model(x), logits_center=centered(x))

  # Cohen et al.'s ImageNet ResNet-50 (torchvision's, in DataParallel), narrow.
  net = TvResNet50(base=8)
  randomize_batchnorm(net, g)
  model = nn.Sequential(NormalizeLayer(IMAGENET_MEAN, IMAGENET_STD), nn.DataParallel(net)).eval()
  checkpoint = {"epoch": 90, "arch": "resnet50", "state_dict": model.state_dict()}
  torch.save(checkpoint, os.path.join(OUT, "cohen_resnet50_tiny.pth.tar"))
  x = images(g, (2, 3, 64, 64))
  save_logits("cohen_resnet50_tiny", x, logits=model(x))

  # MadryLab's CIFAR ResNet-50 in their AttackerModel, narrow, saved with dill.
  net = MadryResNet50(base=8)
  randomize_batchnorm(net, g)
  attacker = AttackerModel(net, torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD))
  model = nn.DataParallel(attacker).eval()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.1 ** (epoch // 50))
  checkpoint = {
    "model": model.state_dict(),
    "optimizer": optimizer.state_dict(),
    "schedule": schedule.state_dict(),  # holds the lambda, which only dill pickles
    "epoch": 150,
    "amp": None,
    "args": argparse.Namespace(arch="resnet50", dataset="cifar", eps=0.5),
  }
  torch.save(checkpoint, os.path.join(OUT, "madry_cifar_resnet50_tiny.pt"), pickle_module=dill)
  x = images(g, (3, 3, 32, 32), low=-0.3, high=1.3)
  save_logits("madry_cifar_resnet50_tiny", x, logits=model(x))

  # Jeong & Shin's LeNet behind Identity (MNIST).
  net = LeNet()
  model = nn.Sequential(nn.Identity(), net).eval()
  checkpoint = {"epoch": 90, "arch": "lenet", "state_dict": model.state_dict()}
  torch.save(checkpoint, os.path.join(OUT, "consistency_lenet.pth.tar"))
  x = images(g, (4, 1, 28, 28))
  save_logits("consistency_lenet", x, logits=model(x))
  for name in sorted(os.listdir(OUT)):
    print(f"{os.path.getsize(os.path.join(OUT, name)):>10,d}  {name}")


if __name__ == "__main__":
  main()
