"""Reader of the IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte``, ``*-idx1-ubyte``).

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values. Only unsigned bytes (type 0x08) occur here.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from acpsl.errors import DataError

_UBYTE = 0x08


def decompress(path: Path, data: bytes) -> bytes:
    """The content of ``data``: gunzipped when ``path`` ends in ``.gz``, else as is."""
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: gzip decompression failed ({exc}); the file is truncated or corrupt: "
            "delete it and download it again (--download)"
        ) from None


def parse_idx(path: Path, content: bytes, *, ndim: int) -> np.ndarray:
    """Parse IDX ``content`` (already decompressed) holding unsigned bytes of ``ndim`` dims.

    Args:
        path: the file, named in errors.
        content: the decompressed bytes.
        ndim: expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A read-only uint8 array of the file's shape, a view of ``content`` (no copy).

    Raises:
        DataError: wrong magic number, or a size that does not match the header.
    """
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: IDX header truncated ({len(content)} bytes < {header})")
    magic = int.from_bytes(content[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension(s)); this is not the expected IDX file"
        )
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(dims, dtype=np.int64))
    if len(content) != header + count:
        raise DataError(
            f"{path}: IDX size check failed: header says {dims} -> {header + count} bytes, "
            f"file has {len(content)}; the file is truncated or corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, count=count, offset=header).reshape(dims)
