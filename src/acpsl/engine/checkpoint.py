"""Checkpoints: everything a run needs to continue exactly where its last round ended.

A checkpoint holds the client and server models, their optimizers, every client's and the
server's scheme state (ACP history, RNG state), the counters (round, global iteration,
cumulative bytes, wall time) and the configuration. It is written after every finished round
with the pickle-free state codec (:mod:`acpsl.cut.state`) through
:func:`acpsl.engine.records.write_atomic` (a fresh temporary file, fsync, :func:`os.replace`,
fsync of the folder), so a crash leaves the previous checkpoint or the new one, never half of
one; loading it cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig
from acpsl.cut.state import decode_state_dict, encode_state_dict
from acpsl.engine.records import write_atomic
from acpsl.errors import CheckpointError, PayloadError

#: Version of the checkpoint's layout (bumped when its keys change).
CHECKPOINT_VERSION = 1
#: Configuration keys a resumed run may change. All but ``rounds`` change nothing that is
#: computed. ``rounds`` may only grow (checked apart), and growing it is *not* neutral: the
#: run's ``T = rounds x iterations per round`` feeds ACP-SL's ``alpha_t = 1 - t/T`` (eq. 9),
#: so the rounds trained after the resume use the larger ``T`` while those before it used
#: the smaller one. The result differs from a run started with the larger ``rounds`` (it is
#: the same for schemes that do not use ``T``); :func:`rounds_note` says so on resume.
RESUMABLE_KEYS = frozenset({"rounds", "progress", "device", "data_dir", "download", "target_acc"})


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> int:
    """Write ``state`` atomically to ``path``; returns the number of bytes written."""
    data = encode_state_dict({"version": CHECKPOINT_VERSION, **state})
    write_atomic(path, data)
    return len(data)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: if the file is missing, corrupt or of another layout version.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        state = decode_state_dict(data)
    except PayloadError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from None
    version = state.get("version") if isinstance(state, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has layout version {version}, this acpsl reads version "
            f"{CHECKPOINT_VERSION}; start a new run in another --out"
        )
    return state


def check_resumable(saved: Mapping[str, Any], config: TrainConfig, *, finished: int) -> None:
    """Refuse to resume a run with a configuration that would compute something else.

    Args:
        saved: the configuration stored in the checkpoint (``TrainConfig.to_dict()``).
        config: the configuration of the resumed run.
        finished: rounds the checkpoint has finished.

    Raises:
        CheckpointError: naming every differing key, or if ``config.rounds < finished``.
    """
    current = config.to_dict()
    # a key the checkpoint lacks was added to TrainConfig later: that run used its default
    saved = {**TrainConfig().to_dict(), **saved}
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    differing = sorted(k for k in keys if _normalize(saved.get(k)) != _normalize(current.get(k)))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"cannot resume: the configuration differs from the checkpointed run in "
            f"{', '.join(differing)} ({details}); resume with the same settings (only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change) or start a new run in another --out"
        )
    if config.rounds < finished:
        raise CheckpointError(
            f"cannot resume with rounds={config.rounds}: the run already finished {finished} "
            "rounds; rounds may only grow"
        )


def rounds_note(saved: Mapping[str, Any], config: TrainConfig) -> str | None:
    """A note when a resumed run's ``rounds`` differs from the checkpointed one, else ``None``.

    ``T`` of ACP-SL's eq. 9 is ``rounds x iterations per round``: the rounds still to train
    use the new ``T``, the finished ones used the old one.
    """
    before = saved.get("rounds")
    if before is None or int(before) == config.rounds:
        return None
    return (
        f"note: rounds changed from {before} to {config.rounds}; T (eq. 9 of ACP-SL, "
        "rounds x iterations per round) changes with it for the rounds still to train, so an "
        "ACP-SL run resumed this way differs from one started with "
        f"{config.rounds} rounds"
    )


def _normalize(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalize(v) for v in value]
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _normalize(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value
