"""The cut: self-describing byte payloads that cross between client and server.

Every scheme encodes into, and decodes from, the helpers of :mod:`acpsl.cut.payload`;
labels have their own codec in :mod:`acpsl.cut.labels`.
"""

from acpsl.cut.payload import (
    DTYPE_CODES,
    HEADER_FIXED,
    KIND_FORWARD,
    KIND_GRAD,
    KIND_LABELS,
    PayloadReader,
    decode_header,
    encode_header,
    float32_bytes,
    header_size,
    pack_bits,
    unpack_bits,
)

__all__ = [
    "DTYPE_CODES",
    "HEADER_FIXED",
    "KIND_FORWARD",
    "KIND_GRAD",
    "KIND_LABELS",
    "PayloadReader",
    "decode_header",
    "encode_header",
    "float32_bytes",
    "header_size",
    "pack_bits",
    "unpack_bits",
]
