"""ResNet-18 exactly as torchvision defines it, in plain PyTorch, split for split learning.

Module names and nesting match ``torchvision.models.resnet18`` (``conv1, bn1, relu, maxpool,
layer1..layer4, avgpool, fc``; blocks with ``conv1/bn1/conv2/bn2/downsample.0/downsample.1``),
so a torchvision ``state_dict`` loads with ``strict=True`` (with ``conv1`` taking
``in_channels`` inputs for greyscale). This is the ACP-SL setup (papers/acp-sl.txt): the
client holds the first four children, the server the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from acpsl.errors import ConfigError
from acpsl.models.init import build_seeded
from acpsl.models.registry import register
from acpsl.models.split import SplitModel, split_children

#: Client children of the ACP-SL split: conv1, bn1, relu, maxpool.
RESNET18_DEFAULT_CUT = 4


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (torchvision's ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs and an identity or 1x1-conv shortcut.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv (2 halves the resolution).
        downsample: the projection shortcut (``1x1 conv + BN``) when shapes change, else None.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ``ResNet(BasicBlock, [2, 2, 2, 2])`` with a choice of input stem.

    The top-level ``relu`` is not in-place (torchvision's is), because it can be the first
    layer of the server part, whose input is a leaf tensor that requires grad; the values
    computed are identical.

    Args:
        in_channels: image channels ``conv1`` takes.
        num_classes: outputs of ``fc``.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv and
            ``maxpool = Identity``, for 32x32 or smaller inputs).
    """

    def __init__(self, *, in_channels: int, num_classes: int, stem: str = "imagenet") -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            raise ConfigError(f"unknown stem {stem!r}; choose one of: imagenet, cifar")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool: nn.Module = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            if stem == "imagenet"
            else nn.Identity()
        )
        self.inplanes = 64
        self.layer1 = self._make_layer(64, blocks=2, stride=1)
        self.layer2 = self._make_layer(128, blocks=2, stride=2)
        self.layer3 = self._make_layer(256, blocks=2, stride=2)
        self.layer4 = self._make_layer(512, blocks=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, *, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register("resnet18")
def resnet18(
    *,
    in_channels: int,
    num_classes: int,
    cut: int | None = None,
    stem: str = "imagenet",
    seed: int = 0,
) -> SplitModel:
    """ResNet-18 split after its first ``cut`` children (default 4: conv1, bn1, relu, maxpool).

    With the ImageNet stem a 28x28 greyscale image gives ``64x7x7`` smashed data at the default
    cut; with 3 input channels and 1000 classes it has 11,689,512 parameters, as torchvision's.
    """
    cut = RESNET18_DEFAULT_CUT if cut is None else cut
    full = build_seeded(
        lambda: ResNet18(in_channels=in_channels, num_classes=num_classes, stem=stem), seed=seed
    )
    client, server = split_children(full, cut=cut, flatten_after="avgpool")
    return SplitModel(
        name="resnet18",
        cut=cut,
        in_channels=in_channels,
        num_classes=num_classes,
        client=client,
        server=server,
        full=full,
    )
