"""A model cut in two: the client part (up to the cut layer) and the server part (the rest).

Both parts are :class:`torch.nn.Sequential` views over the *same* child modules as the full
model, so they share its parameters and their ``state_dict`` keys keep the full model's names
(``conv1.weight`` on the client, ``layer1.0.conv1.weight`` and ``fc.weight`` on the server):
merging the two parts' state dicts gives exactly the full model's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from acpsl.errors import ConfigError

#: Name of the parameter-free flatten stage inserted between global pooling and the classifier.
FLATTEN = "flatten"


@dataclass(frozen=True, eq=False)
class SplitModel:
    """A full model and its two halves, sharing parameters.

    Attributes:
        name: the registered model name.
        cut: number of the full model's top-level children on the client.
        in_channels: image channels the model expects.
        num_classes: number of output logits.
        client: the client part, ``full``'s first ``cut`` children (smashed data = its output).
        server: the server part, the remaining children (the classifier included).
        full: the unsplit model; ``server(client(x))`` equals ``full(x)``.
    """

    name: str
    cut: int
    in_channels: int
    num_classes: int
    client: nn.Module
    server: nn.Module
    full: nn.Module

    def cut_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the smashed data of one sample (the client's output, batch axis dropped).

        Found by running the client on one zero image in eval mode, so it is exact for any
        input size; the model's train/eval mode and statistics are left unchanged.

        Args:
            input_shape: one sample's shape ``(C, H, W)``, with ``C == in_channels``.

        Raises:
            ConfigError: if ``input_shape`` is not ``(in_channels, H, W)`` or is too small for
                the client's layers.
        """
        shape = tuple(input_shape)
        if (
            len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
            or shape[0] != self.in_channels
        ):
            raise ConfigError(
                f"input_shape must be (C, H, W) with C = in_channels = {self.in_channels} "
                f"and positive sizes, got {input_shape!r}"
            )
        was_training = self.client.training
        self.client.eval()
        try:
            with torch.no_grad():
                out = self.client(torch.zeros((1, *shape)))
        except RuntimeError as exc:
            raise ConfigError(
                f"input of shape {shape} is too small for model {self.name!r} cut at {self.cut}: "
                f"{exc}"
            ) from None
        finally:
            self.client.train(was_training)
        return tuple(out.shape[1:])


def split_children(
    full: nn.Module, *, cut: int, flatten_after: str
) -> tuple[nn.Sequential, nn.Sequential]:
    """Split ``full`` after its first ``cut`` top-level children.

    ``full.forward`` must be its children applied in order, with ``torch.flatten(x, 1)`` right
    after the child named ``flatten_after`` (torchvision's ResNet pattern). The flatten becomes
    an ``nn.Flatten`` stage named :data:`FLATTEN` that follows ``flatten_after`` into whichever
    part holds it, so a cut after global pooling hands over a ``[B, features]`` vector.

    Args:
        full: the model to split.
        cut: children on the client, ``1 <= cut < number of children``.
        flatten_after: the child after which the output is flattened.

    Returns:
        ``(client, server)`` sequentials whose modules are ``full``'s own.

    Raises:
        ConfigError: if ``cut`` leaves either part empty or is not an int.
    """
    children = list(full.named_children())
    names = [name for name, _ in children]
    if flatten_after not in names:
        raise ValueError(f"model has no child {flatten_after!r} to flatten after: {names}")
    if not isinstance(cut, int) or isinstance(cut, bool) or not 1 <= cut < len(children):
        raise ConfigError(
            f"cut must be an int in [1, {len(children) - 1}] (client layers of "
            f"{type(full).__name__}: {', '.join(names)}), got {cut!r}"
        )
    staged: list[tuple[str, nn.Module]] = []
    for name, module in children:
        staged.append((name, module))
        if name == flatten_after:
            staged.append((FLATTEN, nn.Flatten(1)))
    # The flatten rides with the pooling layer, so the client holds ``cut`` real children
    # plus the flatten when the pooling is among them.
    split_at = cut + (1 if names.index(flatten_after) < cut else 0)
    return nn.Sequential(OrderedDict(staged[:split_at])), nn.Sequential(
        OrderedDict(staged[split_at:])
    )
