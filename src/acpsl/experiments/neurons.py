"""RandTopk Fig. 5 for a finished run: how often each cut neuron is top-k at inference.

After a top-k or RandTopk run, its client model (from the run's last checkpoint) is applied
to the run's training set in evaluation mode, and :func:`acpsl.analysis.topk_histogram`
counts, per neuron of the cut, the samples whose ``k`` largest-magnitude values include it
(inference behaviour: plain top-k for both schemes, as in the paper).
"""

from __future__ import annotations

from pathlib import Path

import torch

from acpsl.config import TrainConfig

#: Schemes whose inference keeps each sample's top-k values.
TOPK_SCHEMES = ("topk", "randtopk")
#: Samples per forward pass of the count.
_BATCH = 256


def inference_topk_counts(run_dir: str | Path, *, progress: bool = False) -> list[int] | None:
    """Per-neuron top-k counts of a top-k / RandTopk run, or ``None`` for other schemes.

    Args:
        run_dir: a run directory holding ``config.toml`` and ``checkpoint.pt``.
        progress: show a progress bar over the batches.

    Raises:
        CheckpointError: the checkpoint is missing or corrupt.
        DataError: the run's dataset is not available.
    """
    from acpsl import models
    from acpsl.analysis import topk_histogram
    from acpsl.engine.checkpoint import load_checkpoint
    from acpsl.engine.setup import load_split

    path = Path(run_dir)
    config = TrainConfig.from_toml(path / "config.toml")
    if config.scheme not in TOPK_SCHEMES:
        return None
    ckpt = load_checkpoint(path / "checkpoint.pt")
    train_set = load_split(config, train=True)
    split = models.create(
        config.model,
        in_channels=int(train_set.shape[0]),
        num_classes=int(train_set.num_classes),
        cut=config.cut,
        stem=config.stem,
        seed=config.seed,
    )
    # Sequential SL checkpoints the one relayed model; SplitFed's copies are equal after the
    # round's averaging, so the first is every client's.
    split.client.load_state_dict(ckpt["client_models"][0]["model"])
    k = config.scheme_params.get("k")
    if k is None:
        from acpsl.schemes.perinstance import resolve_k

        with torch.no_grad():
            d = split.client.eval()(train_set.batch(torch.arange(1))[0]).numel()
        ratio = config.scheme_params.get("keep_ratio")
        k = resolve_k(k=None, keep_ratio=ratio, d=int(d), scheme=config.scheme)
    order = torch.arange(len(train_set))
    batches = (train_set.batch(idx) for idx in order.split(_BATCH))
    counts = topk_histogram(split.client, batches, k=int(k), progress=progress)
    return [int(v) for v in counts.tolist()]
