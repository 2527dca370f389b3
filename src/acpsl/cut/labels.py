"""Codec of the labels a client sends with its smashed data (the server computes the loss).

Labels are counted apart from the smashed data (``bytes_labels``). They are sent as the
smallest unsigned integer type that holds the largest label: 1 byte each for up to 256
classes, 2 bytes for up to 65,536, else 4. Body: one byte giving that width, then the values.
The header declares dtype int64 (what :func:`decode_labels` rebuilds), whatever the width.
"""

from __future__ import annotations

import numpy as np
import torch

from acpsl.cut.payload import KIND_LABELS, PayloadReader, decode_header, encode_header
from acpsl.errors import PayloadError

#: Scheme id used in the header of label payloads (they belong to no compression scheme).
LABELS_WIRE_ID = 0
_DTYPES = {1: "<u1", 2: "<u2", 4: "<u4"}


def encode_labels(labels: torch.Tensor) -> bytes:
    """Encode a 1-D integer label tensor."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    arr = labels.detach().to("cpu", torch.int64).numpy()
    if arr.size and arr.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    top = int(arr.max()) if arr.size else 0
    width = 1 if top < 2**8 else 2 if top < 2**16 else 4
    header = encode_header(
        scheme_id=LABELS_WIRE_ID, kind=KIND_LABELS, shape=arr.shape, dtype=torch.int64
    )
    return b"".join((header, bytes([width]), arr.astype(_DTYPES[width]).data))


def decode_labels(data: bytes) -> torch.Tensor:
    """Decode labels made by :func:`encode_labels` (int64 tensor)."""
    reader = PayloadReader(data, what="labels payload")
    (count,) = decode_header(
        reader, scheme_id=LABELS_WIRE_ID, kind=KIND_LABELS, ndim=1, dtype=torch.int64
    )
    width = reader.u8()
    if width not in _DTYPES:
        raise PayloadError(f"labels payload: unsupported label width {width} bytes")
    values = reader.view(count, _DTYPES[width])
    reader.finish()
    return torch.from_numpy(values.astype(np.int64))  # the one copy
