"""SplitFed aggregation: the data-size-weighted average of the clients' model states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acpsl.cut.state import decode_state_dict, encode_state_dict
from acpsl.engine.client import ClientRuntime
from acpsl.errors import PayloadError, TrainingError


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], *, weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """FedAvg of ``states``: ``sum_c w_c * state_c / sum_c w_c`` entry by entry.

    SplitFed weights each client by its number of training samples, so a client with twice
    the data counts twice. Floating-point entries are averaged in float64 and cast back;
    integer entries (BatchNorm's ``num_batches_tracked``) are averaged and rounded.

    Args:
        states: one ``state_dict`` per client, all with the same keys and shapes.
        weights: one non-negative weight per client (data sizes), not all zero.

    Returns:
        The averaged ``state_dict`` (CPU tensors).

    Raises:
        TrainingError: if the states disagree in keys or shapes, or the weights are invalid.
    """
    if not states or len(states) != len(weights):
        raise TrainingError(
            f"cannot average {len(states)} client states with {len(weights)} weights"
        )
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise TrainingError(f"aggregation weights must be >= 0 and not all 0, got {weights}")
    w = w / w.sum()
    keys = list(states[0].keys())
    out: dict[str, torch.Tensor] = {}
    for state in states[1:]:
        if list(state.keys()) != keys:
            raise TrainingError("client model states have different keys; cannot average them")
    for key in keys:
        tensors = [s[key].detach().to("cpu") for s in states]
        shape = tensors[0].shape
        if any(t.shape != shape for t in tensors):
            raise TrainingError(f"client states disagree on the shape of {key!r}")
        stacked = torch.stack([t.to(torch.float64) for t in tensors])
        mean = (stacked * w.view(-1, *([1] * len(shape)))).sum(dim=0)
        dtype = tensors[0].dtype
        if dtype.is_floating_point:
            out[key] = mean.to(dtype)
        else:
            out[key] = mean.round().to(dtype)
    return out


def splitfed_aggregate(clients: Sequence[ClientRuntime], *, sizes: Sequence[int]) -> int:
    """End of a SplitFed round: every client uploads its model, all download the average.

    Each upload and the download are real :func:`~acpsl.cut.state.encode_state_dict` bytes;
    the aggregator averages what it decoded (:func:`weighted_average`, weights = data sizes).
    Optimizer states stay on the clients.

    Args:
        clients: the round's clients, each holding its own client-model copy.
        sizes: training samples of each client (the FedAvg weights).

    Returns:
        Bytes moved: the sum of the uploads plus one download per client (``bytes_model``).
    """
    uploads = [client.export_state(with_optimizer=False) for client in clients]
    states = []
    for data in uploads:
        state = decode_state_dict(data)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise PayloadError("client model upload does not hold a model state")
        states.append(state["model"])
    download = encode_state_dict({"model": weighted_average(states, weights=sizes)})
    for client in clients:
        client.import_state(download)
    return sum(len(u) for u in uploads) + len(download) * len(clients)
