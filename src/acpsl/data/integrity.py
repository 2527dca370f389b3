"""md5 checks of dataset files, cached so that loading a dataset twice hashes it once.

Upstream publishes the md5 of each archive it serves. A file can also be accepted by the md5
of its decompressed content, because a re-compressed copy (for example the shared MNIST
``train-images-idx3-ubyte.gz``, re-gzipped) holds the same bytes under a different ``.gz`` md5.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from acpsl.errors import DataError

_CacheKey = tuple[str, int, int, str]
_CACHE: dict[_CacheKey, bool] = {}
_LOCK = threading.Lock()


def md5_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex md5 of ``data`` (md5 only as upstream's integrity check, not for security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of the file at ``path``, read in chunks so large files stay out of memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _key(path: Path, tag: str) -> _CacheKey:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tag)


def clear_cache() -> None:
    """Forget every cached md5 result (for tests, or after replacing files in place)."""
    with _LOCK:
        _CACHE.clear()


def verify_md5(
    path: Path,
    *,
    data: bytes | None = None,
    md5s: Collection[str] = (),
    raw_md5s: Collection[str] = (),
    decompress: Callable[[bytes], bytes] | None = None,
    raw: bytes | None = None,
) -> None:
    """Check ``path`` against the known md5 values of its file or of its decompressed content.

    The result is cached in memory keyed by path, size and mtime, so a second load of the
    same unchanged file costs one ``stat``. Nothing is checked when no md5 is known.

    Args:
        path: the file on disk.
        data: its bytes, if already read (saves a second read).
        md5s: accepted md5 values of the file as stored.
        raw_md5s: accepted md5 values of its decompressed content.
        decompress: turns the stored bytes into the content (needed when ``raw_md5s`` are
            given and ``raw`` is not).
        raw: the decompressed content, if already computed.

    Raises:
        DataError: naming the file, the md5 found and the values expected.
    """
    if not md5s and not raw_md5s:
        return
    key = _key(path, ",".join(sorted(md5s)) + "|" + ",".join(sorted(raw_md5s)))
    with _LOCK:
        if _CACHE.get(key):
            return
    if data is None:
        data = path.read_bytes()
    found = md5_bytes(data)
    ok = found in md5s
    found_raw = None
    if not ok and raw_md5s:
        if raw is None:
            raw = decompress(data) if decompress is not None else data
        found_raw = md5_bytes(raw)
        ok = found_raw in raw_md5s
    if not ok:
        expected = sorted(set(md5s) | set(raw_md5s))
        detail = f"md5 {found}" + (f" (content md5 {found_raw})" if found_raw else "")
        raise DataError(
            f"md5 check failed for {path}: found {detail}, expected one of {', '.join(expected)}; "
            "the file is corrupt or not the upstream file: delete it and download it again "
            "(--download) or copy a good copy there"
        )
    with _LOCK:
        _CACHE[key] = True
