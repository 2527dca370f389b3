"""Where a dataset's files are looked for, and the error that says where to put them.

A dataset folder (``<root>/<dataset>/``) may hold the upstream files directly or inside the
folder its upstream tarball unpacks to (``cifar-10-batches-py/`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from acpsl.errors import DataError


@dataclass(frozen=True)
class UpstreamFile:
    """One file as its upstream host publishes it.

    Attributes:
        name: file name.
        md5s: accepted md5 values of the file as stored (upstream's, plus known good copies).
        raw_md5s: accepted md5 values of its decompressed content (for ``.gz`` files).
    """

    name: str
    md5s: frozenset[str] = field(default_factory=frozenset)
    raw_md5s: frozenset[str] = field(default_factory=frozenset)


def find_file(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first existing ``folder / name``, folders outermost loop; ``None`` if none exists."""
    for folder in folders:
        for name in names:
            path = folder / name
            if path.is_file():
                return path
    return None


def missing_files_error(dataset: str, folder: Path, expected: Sequence[str]) -> DataError:
    """A :class:`DataError` naming the files a dataset needs, where, and how to get them."""
    listing = ", ".join(expected)
    return DataError(
        f"{dataset}: missing file(s) {listing} in {folder.resolve()}; run with --download "
        f"(download=True) to fetch them from upstream, or copy them to that folder"
    )
