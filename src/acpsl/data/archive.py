"""Safe extraction of an upstream dataset tarball (CIFAR ships as one ``.tar.gz``).

A tarball read from disk is untrusted: a member may point outside the destination (absolute
path, ``..``), be a link, or be a device. Those are refused, and extraction goes to a
temporary folder that is moved into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from acpsl.errors import DataError


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing to extract {member.name!r} (path leaves the folder)")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refusing to extract {member.name!r} (links and special files are not "
            "allowed in a dataset archive)"
        )


def extract_tarball(archive: Path, dest: Path) -> list[Path]:
    """Extract ``archive`` (``.tar``/``.tar.gz``) into ``dest`` safely and atomically.

    Every top-level entry is extracted into a temporary folder first, then moved into ``dest``;
    entries already present in ``dest`` are kept as they are.

    Args:
        archive: the tarball.
        dest: the folder that receives its top-level entries.

    Returns:
        The top-level paths now in ``dest`` that came from the archive.

    Raises:
        DataError: the archive is unreadable or holds an unsafe member.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(
                f"{archive}: cannot extract ({exc}); the archive is corrupt or truncated: "
                "delete it and download it again (--download)"
            ) from None
        placed = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
