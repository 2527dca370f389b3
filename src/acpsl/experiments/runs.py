"""Finding and reading the runs of a grid directory (what ``acpsl report`` works on).

A grid made by ``acpsl compare`` looks like::

    DIR/compare.json                   # the grid: preset, scale, targets, every run's plan
    DIR/<panel>/<label>/seed<k>/       # one run directory per run (acpsl.engine.train's)
        run.json                       # panel, label, seed, scheme of this run
        config.toml  records.jsonl  summary.json  checkpoint.pt  ...

Any directory tree holding ``records.jsonl`` files can be reported, though: a run without
``run.json`` is labelled by its scheme, and its panel is the folder above it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acpsl.config import read_toml
from acpsl.errors import CheckpointError

#: File names of a grid and of its runs.
GRID_FILE = "compare.json"
RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
PARTITION_FILE = "partition.json"


@dataclass(frozen=True)
class RunData:
    """One run's identity and records.

    Attributes:
        path: the run directory.
        panel: panel name; ``panel_title`` its human-readable title.
        label: curve label (the scheme name when the run has no ``run.json``).
        scheme: the scheme the run used.
        seed: the run's seed.
        config: the resolved configuration (``config.toml``) as a dict.
        records: the round records, in order.
        name: the display name the preset gave the curve (``None``: derived from the scheme,
            see :mod:`acpsl.experiments.names`).
    """

    path: Path
    panel: str
    panel_title: str
    label: str
    scheme: str
    seed: int
    config: Mapping[str, Any]
    records: list[dict[str, Any]]
    name: str | None = None

    @property
    def scheme_params(self) -> dict[str, Any]:
        """The scheme parameters the run used (its ``config.toml``'s)."""
        return dict(self.config.get("scheme_params") or {})

    @property
    def finished(self) -> bool:
        """Whether every configured round has a record."""
        return len(self.records) >= int(self.config.get("rounds", 0)) > 0


def read_grid(root: Path) -> dict[str, Any]:
    """``compare.json`` of a grid, or ``{}`` when the directory has none."""
    path = root / GRID_FILE
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); rerun acpsl compare") from None


def load_run(path: Path, *, root: Path) -> RunData:
    """Read one run directory.

    Raises:
        CheckpointError: the directory has no records, or its files are corrupt.
    """
    from acpsl.engine.records import read_records, upgrade_record

    config: dict[str, Any] = {}
    if (path / CONFIG_FILE).exists():
        config = read_toml(path / CONFIG_FILE)
    meta: dict[str, Any] = {}
    if (path / RUN_FILE).exists():
        try:
            meta = dict(json.loads((path / RUN_FILE).read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path / RUN_FILE} is not valid JSON ({exc})") from None
    records = read_records(path / RECORDS_FILE)
    rounds = [int(r.get("round", -1)) for r in records]
    if rounds != list(range(1, len(records) + 1)):
        raise CheckpointError(
            f"{path / RECORDS_FILE} holds rounds {rounds}: a gap or a duplicate; the run "
            "directory is inconsistent"
        )
    scheme = str(meta.get("scheme", config.get("scheme", "?")))
    # records written before kept_frac_* existed held the kept fraction's complement in
    # ratio_* for every scheme: read them with today's meanings
    records = [upgrade_record(r, scheme=scheme) for r in records]
    rel = path.relative_to(root).parts if path != root else ()
    default_panel = rel[0] if len(rel) >= 3 else (str(config.get("dataset", "runs")))
    panel = str(meta.get("panel", default_panel))
    return RunData(
        path=path,
        panel=panel,
        panel_title=str(meta.get("panel_title") or panel),
        label=str(meta.get("label", scheme)),
        scheme=scheme,
        seed=int(meta.get("seed", config.get("seed", 0))),
        config=config,
        records=records,
        name=None if meta.get("name") is None else str(meta["name"]),
    )


def discover(root: str | Path) -> list[RunData]:
    """Every run under ``root`` that finished at least one round.

    Runs are ordered as ``compare.json`` lists them (panels, then labels, then seeds, as
    the preset declares them); runs it does not list come after, by path.

    Raises:
        CheckpointError: ``root`` does not exist or holds no run with records.
    """
    base = Path(root)
    if not base.is_dir():
        raise CheckpointError(f"{base} is not a directory; pass the --out of acpsl compare")
    order = [str(p.get("key")) for p in read_grid(base).get("runs", [])]
    found = []
    for records_path in sorted(base.rglob(RECORDS_FILE)):
        run = load_run(records_path.parent, root=base)
        if run.records:
            found.append(run)
    if not found:
        raise CheckpointError(f"{base} holds no run with a finished round ({RECORDS_FILE})")
    position = {key: i for i, key in enumerate(order)}

    def sort_key(run: RunData) -> tuple[int, str]:
        key = run.path.relative_to(base).as_posix()
        return (position.get(key, len(position)), key)

    return sorted(found, key=sort_key)


def training_samples(path: Path) -> int:
    """Training samples one round of the run in ``path`` passes over (every client's
    local data once), read from its ``partition.json``.

    Raises:
        CheckpointError: the file is missing or not the engine's partition record.
    """
    file = Path(path) / PARTITION_FILE
    try:
        sizes = json.loads(file.read_text(encoding="utf-8"))["sizes"]
        return int(sum(int(s) for s in sizes))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: {path} is not a run directory") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a partition record ({exc})") from None


def uplink_bytes_per_sample(path: Path) -> float:
    """Realised mean uplink (smashed-data) bytes per training sample of a run's recorded
    rounds: ``bytes_up_total`` of its last record over the samples those rounds sent.

    This is what a baseline is matched to (SPEC section 8): ACP-SL's payload varies with
    ``P_t`` (eq. 13) and with the batch sizes, so its realised mean, not ``1 - P_base``, is
    the compression level it actually reached.

    Raises:
        CheckpointError: the run has no records or no partition record.
    """
    from acpsl.engine.records import read_records

    records = read_records(Path(path) / RECORDS_FILE)
    if not records:
        raise CheckpointError(f"{path} has no finished round to measure its uplink bytes")
    samples = training_samples(path) * len(records)
    return float(records[-1]["bytes_up_total"]) / samples
