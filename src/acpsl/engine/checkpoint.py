"""Checkpoints: everything a run needs to continue exactly where its last round ended.

A checkpoint holds the client and server models, their optimizers, every client's and the
server's scheme state (ACP history, RNG state), the counters (round, global iteration,
cumulative bytes, wall time) and the configuration. It is written after every finished round
with the pickle-free state codec (:mod:`acpsl.cut.state`) through
:func:`acpsl.engine.records.write_atomic` (a fresh temporary file, fsync, :func:`os.replace`,
fsync of the folder), so a crash leaves the previous checkpoint or the new one, never half of
one; loading it cannot run code.

File format: ``b"SC" | version u8 | BLAKE2b-256 digest (32 bytes) | state`` where ``state``
is the state codec's bytes and the digest is computed over them. :func:`load_checkpoint`
verifies the digest before decoding, so a flipped bit anywhere in the weights is refused
with a one-line :class:`~acpsl.errors.CheckpointError` naming the file, instead of training
on from corrupted weights. A checkpoint written before checksums existed (the bare state
codec bytes, starting ``b"SD"``) is still accepted, with a warning that it is unverified.

Run directories (:func:`prepare_run_dir`): a fresh run writes a round-0 checkpoint before
its first round, so a record is finished exactly when a checkpoint covers it; ``resume``
drops record lines past the checkpoint (a crash between the two writes) and refuses a
directory whose records hold finished rounds but whose checkpoint is gone (it never deletes
them). Leftover temporaries of an interrupted :func:`~acpsl.engine.records.write_atomic`
(``.checkpoint.pt.*.tmp``, ``.config.toml.*.tmp``, ...) are removed when a run starts.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig
from acpsl.cut.state import MAGIC as STATE_MAGIC
from acpsl.cut.state import decode_state_dict, encode_state_dict
from acpsl.engine.records import read_records, write_atomic
from acpsl.errors import CheckpointError, PayloadError

log = logging.getLogger(__name__)

#: Version of the checkpoint's layout (bumped when its keys change).
CHECKPOINT_VERSION = 1
#: Magic and version of the checksummed checkpoint file.
FILE_MAGIC = b"SC"
FILE_VERSION = 1
#: Bytes of the BLAKE2b digest after the magic and version.
DIGEST_SIZE = 32
#: Keys (and types) every checkpoint holds besides the models; checked on load.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "round": int,
    "iteration": int,
    "wall_s": (int, float),
    "config": dict,
    "totals": dict,
}
#: Names of the temporaries :func:`acpsl.engine.records.write_atomic` makes: ``.NAME.XXXXXXXX.tmp``
#: (:func:`tempfile.mkstemp`'s 8 random characters).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: Configuration keys a resumed run may change. All but ``rounds`` change nothing that is
#: computed. ``rounds`` may only grow (checked apart), and growing it is *not* neutral: the
#: run's ``T = rounds x iterations per round`` feeds ACP-SL's ``alpha_t = 1 - t/T`` (eq. 9),
#: so the rounds trained after the resume use the larger ``T`` while those before it used
#: the smaller one. The result differs from a run started with the larger ``rounds`` (it is
#: the same for schemes that do not use ``T``); :func:`rounds_note` says so on resume.
RESUMABLE_KEYS = frozenset(
    {"rounds", "progress", "device", "data_dir", "download", "target_acc", "loggers"}
)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> int:
    """Write ``state`` atomically to ``path`` with its checksum; returns the bytes written."""
    data = encode_state_dict({"version": CHECKPOINT_VERSION, **state})
    digest = hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()
    blob = b"".join((FILE_MAGIC, bytes([FILE_VERSION]), digest, data))
    write_atomic(path, blob)
    return len(blob)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Raises:
        CheckpointError: (one line, naming the file) the file is missing, its checksum does
            not match, it is corrupt, of another layout version, or lacks a required key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    state_bytes = _verified(path, data)
    try:
        state = decode_state_dict(state_bytes)
    except PayloadError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from None
    version = state.get("version") if isinstance(state, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has layout version {version}, this acpsl reads version "
            f"{CHECKPOINT_VERSION}; start a new run in another out_dir (--out)"
        )
    for key, kind in REQUIRED_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: it lacks {key!r} (or it is not a "
                f"{getattr(kind, '__name__', 'number')}); start a new run in another --out"
            )
    return state


def _verified(path: Path, data: bytes) -> bytes:
    """The state bytes of checkpoint file ``data``, after checking its digest.

    Raises:
        CheckpointError: the digest does not match, or the file is of no known format.
    """
    if data[:2] == STATE_MAGIC:  # written before checksums existed
        log.warning("checkpoint %s has no checksum (older acpsl): loading it unverified", path)
        return data
    head = 3 + DIGEST_SIZE
    if data[:2] != FILE_MAGIC or len(data) < head:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: not an acpsl checkpoint (bad header); "
            "start a new run in another --out"
        )
    if data[2] != FILE_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has file version {data[2]}, this acpsl reads {FILE_VERSION}; "
            "start a new run in another --out"
        )
    state = memoryview(data)[head:]
    if hashlib.blake2b(state, digest_size=DIGEST_SIZE).digest() != data[3:head]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its checksum does not match its contents (the file "
            "changed after it was written); restore it from a backup or start a new run in "
            "another --out"
        )
    return bytes(state)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what an interrupted :func:`~acpsl.engine.records.write_atomic` left in
    ``folder`` (``.checkpoint.pt.XXXXXXXX.tmp``, ``.config.toml.XXXXXXXX.tmp``, ...); other
    files are left alone. Call it only while no other process writes ``folder``.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if _TEMPORARY.match(path.name) and path.is_file():
            try:
                path.unlink()
            except OSError as exc:  # not ours to fix: the next write makes a fresh one
                log.warning("cannot remove the leftover %s: %s", path, exc)
                continue
            log.info("removed %s, left by an interrupted write", path)
            removed.append(path)
    return removed


def prepare_run_dir(
    out: Path,
    *,
    config: TrainConfig,
    resume: bool,
    checkpoint: str,
    records: str,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Check that ``out`` may be used as asked, before anything in it is changed.

    Removes leftover temporaries (:func:`remove_stale_temporaries`), then: with ``resume``,
    loads and checks the checkpoint (:func:`check_resumable`), or refuses when the records
    hold finished rounds but the checkpoint is missing (resuming would delete them); without
    ``resume``, refuses a directory that already holds a run.

    Args:
        out: the run directory (exists).
        config: the run's configuration.
        resume: whether the run continues.
        checkpoint: the checkpoint's file name in ``out``.
        records: the records' file name in ``out``.
        say: where a progress line goes.

    Returns:
        The checkpoint to continue from, or ``None`` to start at round 1.

    Raises:
        CheckpointError: one line saying what is wrong and what to do.
    """
    remove_stale_temporaries(out)
    ckpt_path, records_path = out / checkpoint, out / records
    if not resume:
        if ckpt_path.exists() or read_records(records_path):
            raise CheckpointError(
                f"{out} already holds a run ({records}/{checkpoint}); pass resume=True (acpsl "
                "train --resume) to continue it, or choose another out_dir (--out)"
            )
        return None
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        check_resumable(ckpt["config"], config, finished=int(ckpt["round"]))
        return ckpt
    finished = read_records(records_path)
    if finished:
        raise CheckpointError(
            f"cannot resume {out}: {records} holds {len(finished)} finished round"
            f"{'s' if len(finished) != 1 else ''} but {checkpoint} is missing, and starting "
            f"over would delete them; restore {checkpoint}, or move {records} away to start "
            "again"
        )
    say(f"no checkpoint in {out}: starting from round 1")
    return None


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
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change) or start a new run in another "
            "out_dir (--out)"
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
