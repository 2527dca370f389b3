"""A small, fast CNN for tests and quick runs, split after its first conv block.

``block1`` (3x3 conv to 32 channels, ReLU, 2x2 max-pool) -> ``block2`` (3x3 conv to 64, ReLU,
2x2 max-pool) -> ``pool`` (adaptive average pool to 4x4) -> flatten -> ``fc``. The default
cut hands over ``[B, 32, H/2, W/2]`` feature maps, so channel-pruning schemes apply; the
adaptive pool makes it work for 28x28 and 32x32 inputs alike.
"""

from __future__ import annotations

import torch
from torch import nn

from acpsl.models.init import build_seeded
from acpsl.models.registry import register
from acpsl.models.split import SplitModel, split_children

#: Client children at the default cut: ``block1``.
SMALLCNN_DEFAULT_CUT = 1


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Two conv blocks and a linear classifier (about 0.03M parameters plus ``fc``).

    Args:
        in_channels: image channels.
        num_classes: outputs of ``fc``.
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.block1 = _conv_block(in_channels, 32)
        self.block2 = _conv_block(32, 64)
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(64 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        return self.fc(torch.flatten(x, 1))


@register("smallcnn")
def smallcnn(
    *,
    in_channels: int,
    num_classes: int,
    cut: int | None = None,
    stem: str = "cifar",
    seed: int = 0,
) -> SplitModel:
    """SmallCNN split after its first ``cut`` children (default 1: ``block1``).

    ``stem`` is accepted for a uniform interface but has no effect.
    """
    del stem  # one fixed stem; the name was already validated by ``create``
    cut = SMALLCNN_DEFAULT_CUT if cut is None else cut
    full = build_seeded(
        lambda: SmallCNN(in_channels=in_channels, num_classes=num_classes), seed=seed
    )
    client, server = split_children(full, cut=cut, flatten_after="pool")
    return SplitModel(
        name="smallcnn",
        cut=cut,
        in_channels=in_channels,
        num_classes=num_classes,
        client=client,
        server=server,
        full=full,
    )
