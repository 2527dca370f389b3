"""ResNet-20, the CIFAR ResNet of He et al. (2016, section 4.2), split for split learning.

Three stages of three basic blocks (16, 32, 64 channels at 32x32, 16x16, 8x8), global average
pooling and one linear layer: 6n + 2 = 20 weighted layers with n = 3. Shortcuts are
**option A** of the paper, parameter-free: where a stage halves the resolution and doubles the
channels, the shortcut takes every second pixel and appends zero channels (as
fb.resnet.torch's ``shortcutType A``). That gives 269,722 parameters for 10 classes.

The RandTopk setup (papers/randtopk-sl.txt) splits it at its last layer: the client computes
the pooled 64-d feature, the server is the linear classifier. That is the default cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acpsl.models.init import build_seeded
from acpsl.models.registry import register
from acpsl.models.resnet import conv3x3
from acpsl.models.split import SplitModel, split_children


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels to ``planes``.

    Args:
        planes: output channels (the input's channels padded with zeros at the end).
        stride: spatial subsampling step.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.planes - x.shape[1]))


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity or option-A shortcut.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = (
            PadShortcut(planes, stride) if stride != 1 or inplanes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with ``6 * blocks + 2`` layers.

    The top-level ``relu`` is not in-place, because it can start the server part.

    Args:
        in_channels: image channels.
        num_classes: outputs of ``fc``.
        blocks: basic blocks per stage (3 for ResNet-20).
    """

    def __init__(self, *, in_channels: int, num_classes: int, blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, 16, blocks=blocks, stride=1)
        self.layer2 = self._make_layer(16, 32, blocks=blocks, stride=2)
        self.layer3 = self._make_layer(32, 64, blocks=blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, *, blocks: int, stride: int) -> nn.Sequential:
        layers = [CifarBasicBlock(inplanes, planes, stride)]
        layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnet20")
def resnet20(
    *,
    in_channels: int,
    num_classes: int,
    cut: int | None = None,
    stem: str = "cifar",
    seed: int = 0,
) -> SplitModel:
    """ResNet-20 split after its first ``cut`` children (default 7: all but ``fc``).

    Its children are ``conv1, bn1, relu, layer1, layer2, layer3, avgpool, fc``; at the default
    cut the client outputs the flattened 64-d feature. ``stem`` is accepted for a uniform
    interface but has no effect: this network has one (CIFAR) stem.
    """
    del stem  # one fixed stem; the name was already validated by ``create``
    full = build_seeded(
        lambda: CifarResNet(in_channels=in_channels, num_classes=num_classes, blocks=3),
        seed=seed,
    )
    cut = len(list(full.children())) - 1 if cut is None else cut
    client, server = split_children(full, cut=cut, flatten_after="avgpool")
    return SplitModel(
        name="resnet20",
        cut=cut,
        in_channels=in_channels,
        num_classes=num_classes,
        client=client,
        server=server,
        full=full,
    )
