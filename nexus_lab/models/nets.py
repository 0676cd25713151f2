"""The built-in zoo's architectures: small conv nets with seeded random weights (nothing is downloaded).

Imports torch; imported only when a built-in model is built. No registry, device or Dask code here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: The detector's grid: a 64 x 64 image is scored on 8 x 8 cells; each cell whose objectness z-score exceeds
#: DETECT_THRESHOLD yields a box (at most MAX_BOXES, best first).
GRID = 8
DETECT_THRESHOLD = 2.0
MAX_BOXES = 16
#: The objectness map: ``IMAGE_WEIGHT * standardised conv score + prior``, the prior being PRIOR_NOISE-scaled
#: normal noise, and HOT_BOOST plus its magnitude on HOT_CELLS seeded cells (about 2.5 boxes per image on
#: average, 2 on a blank frame).
IMAGE_WEIGHT = 0.8
PRIOR_NOISE = 0.4
HOT_CELLS = 2
HOT_BOOST = 2.3


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with He-scaled normal values from a private generator seeded with ``seed``.

    Independent of torch's global RNG (so building a model never perturbs or depends on user code), hence the same
    seed gives bit-identical weights in every process. Biases start at zero.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
                continue
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else p.shape[0]
            p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / max(fan_in, 1)))
    return module


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]


def tiny(seed: int) -> nn.Sequential:
    """3x32x32 -> 10 logits: one strided conv, pooling, a linear head (fast: for tests and CLI smoke runs)."""
    return seeded(nn.Sequential(*_conv(3, 8, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)), seed)


def backbone(seed: int) -> list[nn.Module]:
    """The convnet feature extractor (3x64x64 -> 128 features, ~20 M multiply-adds): the shared prefix of the
    fine-tuned variants. Seeded on its own, so every variant built from one seed shares it bit for bit."""
    layers = [*_conv(3, 32, 2), *_conv(32, 64, 2), *_conv(64, 128, 2), *_conv(128, 128, 1),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    seeded(nn.Sequential(*layers), seed)
    return layers


def classifier(backbone_seed: int, head_seed: int, classes: int) -> nn.Sequential:
    """The convnet classifier: the seeded backbone plus a linear head of ``classes`` logits seeded on its own
    (a "fine-tuned" variant is the same backbone with another head)."""
    head = seeded(nn.Linear(128, classes), head_seed)
    return nn.Sequential(*backbone(backbone_seed), head)


class ObjectnessGrid(nn.Module):
    """The detector head's output map (B, 6, GRID, GRID): channel 0 is an objectness z-score, standardised over
    the image's cells and offset by a fixed seeded per-cell prior with HOT_CELLS likely cells (a camera's road:
    even a blank frame yields a box or two, so zero payloads still fan out); channels 1-4 box offsets and size,
    channel 5 a class score."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        prior = torch.randn((1, 1, GRID, GRID), generator=g) * PRIOR_NOISE
        hot = torch.randperm(GRID * GRID, generator=g)[:HOT_CELLS]
        prior.view(-1)[hot] = HOT_BOOST + prior.view(-1)[hot].abs()
        self.register_buffer("prior", prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obj = x[:, :1]
        mean = obj.mean(dim=(2, 3), keepdim=True)
        std = obj.std(dim=(2, 3), keepdim=True)
        z = (obj - mean) / (std + 1e-6) * IMAGE_WEIGHT + self.prior
        return torch.cat([z, x[:, 1:]], dim=1)


def detector(seed: int) -> nn.Sequential:
    """3x64x64 -> (6, 8, 8) dense box map; ``nexus_lab.models.builtin.boxes`` turns one image's map into a
    variable number of boxes."""
    conv = nn.Sequential(*_conv(3, 16, 2), *_conv(16, 32, 2), *_conv(32, 64, 2), nn.Conv2d(64, 6, 1))
    seeded(conv, seed)
    return nn.Sequential(*conv, ObjectnessGrid(seed + 1))
