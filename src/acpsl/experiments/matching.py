"""Resolve a run's matched compression level into its scheme's size parameter.

Presets say *how compressed* a baseline should be (a fraction of the uncompressed payload,
or "as much as ACP-SL"); this module turns that into ``k`` or ``bits`` for the run's actual
cut shape, with :func:`acpsl.schemes.matching.match_params` (exact payload sizes, checked on
a real encode). It runs in the process that trains the run, just before training, because
the cut shape depends on the model, the cut and the dataset's image size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from acpsl.config import TrainConfig
from acpsl.cut.payload import header_size
from acpsl.errors import ConfigError

#: Seed of the random features on which ACP-SL's payload is measured.
_PROBE_BATCH_SEED = 0


def cut_shape(config: TrainConfig) -> tuple[tuple[int, ...], int]:
    """Shape of one sample of the smashed data of ``config``'s model and cut, and the
    number of classes of its dataset.

    Loads the dataset's test split (to learn its image shape and classes) and runs the
    client model on one all-zero image.
    """
    from acpsl import data, models

    test = data.load_dataset(
        config.dataset, root=config.data_dir, train=False, download=config.download
    )
    shape = test.shape
    split = models.create(
        config.model,
        in_channels=int(shape[0]),
        num_classes=int(test.num_classes),
        cut=config.cut,
        stem=config.stem,
        seed=0,
    )
    split.client.eval()
    with torch.no_grad():
        out = split.client(torch.zeros(1, *shape))
    return tuple(int(s) for s in out.shape[1:]), int(test.num_classes)


def acp_bytes_per_sample(
    acp_params: Mapping[str, Any],
    *,
    sample_shape: tuple[int, ...],
    batch_size: int,
    num_classes: int,
) -> float:
    """ACP-SL's uplink bytes per sample at ``P_base`` (fixed ratio), from a real encode.

    The features are seeded random values and every class appears, so LCIS has scores to
    rank; the payload size depends only on the number of kept channels, ``N - round(P_base
    N)``, so the values themselves do not matter.
    """
    from acpsl.schemes import create
    from acpsl.schemes.matching import measure_bytes_per_sample

    params = {k: v for k, v in acp_params.items() if k in ("p_min", "p_base", "p_max")}
    scheme = create("acp", ratio="fixed", **params)
    gen = torch.Generator().manual_seed(_PROBE_BATCH_SEED)
    x = torch.rand((batch_size, *sample_shape), generator=gen)
    labels = torch.arange(batch_size) % num_classes
    scheme.set_iteration(t=1, total=1)
    return measure_bytes_per_sample(scheme, [(x, labels)])


def resolve_match(
    config: TrainConfig,
    *,
    fraction: float | None = None,
    acp_params: Mapping[str, Any] | None = None,
    target_bytes_per_sample: float | None = None,
) -> TrainConfig:
    """``config`` with the size parameter of its scheme matched to a target payload.

    Args:
        config: the run; its ``scheme_params`` keep their other entries (e.g. ``alpha``).
        fraction: target = this fraction of the uncompressed (standard) payload per sample,
            header share included.
        acp_params: target = ACP-SL's payload per sample at ``p_base`` of these parameters.
        target_bytes_per_sample: target = this many bytes per sample (e.g. ACP-SL's realised
            mean, :func:`acpsl.experiments.runs.uplink_bytes_per_sample`).

    Raises:
        ConfigError: not exactly one target given, or a scheme without a size parameter.
    """
    from acpsl.schemes.matching import match_params

    given = [x is not None for x in (fraction, acp_params, target_bytes_per_sample)]
    if sum(given) != 1:
        raise ConfigError(
            "resolve_match needs exactly one of fraction, acp_params and target_bytes_per_sample"
        )
    sample_shape, num_classes = cut_shape(config)
    batch = config.batch_size
    if target_bytes_per_sample is not None:
        target = float(target_bytes_per_sample)
    elif fraction is not None:
        d = math.prod(sample_shape)
        standard = (header_size(1 + len(sample_shape)) + 4 * batch * d) / batch
        target = fraction * standard
    else:
        assert acp_params is not None
        target = acp_bytes_per_sample(
            acp_params, sample_shape=sample_shape, batch_size=batch, num_classes=num_classes
        )
    fixed = {k: v for k, v in config.scheme_params.items() if k not in ("k", "keep_ratio", "bits")}
    params = match_params(
        config.scheme,
        target_bytes_per_sample=target,
        sample_shape=sample_shape,
        batch_size=batch,
        **fixed,
    )
    return config.replace(scheme_params=params)
