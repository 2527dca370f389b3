"""Wire format of everything that crosses the cut.

A payload is ``header + body``. The header makes it self-describing:

====== ====== ==============================================================
offset bytes  field
====== ====== ==============================================================
0      2      magic ``b"SL"``
2      1      format version (:data:`VERSION`)
3      1      scheme wire id (each scheme class has its own, see ``Scheme.wire_id``)
4      1      kind: :data:`KIND_FORWARD`, :data:`KIND_GRAD` or :data:`KIND_LABELS`
5      1      dtype of the tensor the payload rebuilds (a code of :data:`DTYPE_CODES`)
6      1      ndim of the tensor the payload rebuilds
7      4*ndim shape, little-endian uint32 per dimension
====== ====== ==============================================================

so the header of a ``[B, N, H, W]`` tensor is ``7 + 16 = 23`` bytes. Format version 1 had no
dtype byte (``6 + 4*ndim`` bytes); it is rejected. The dtype is the one the decoder rebuilds
(float32 for smashed data and gradients, int64 for labels), not the storage of the body,
which is the scheme's own (e.g. packed codes or uint8 labels); :func:`decode_header` rejects
a payload whose dtype is not the one its decoder rebuilds. dtype codes: 0 float32,
1 float16, 2 bfloat16, 3 float64, 4 int64, 5 int32, 6 uint8, 7 bool. The body layout is the scheme's
own; every decoder reads it through :class:`PayloadReader`, which raises
:class:`~acpsl.errors.PayloadError` on truncation and on trailing bytes, so a decoder
cannot silently accept a malformed payload.

Hostile headers. A header declares the shape of the tensor a decoder will allocate, and a
sparse body (top-k indices, L1 counts, an ACP mask, a dropped group) legitimately rebuilds
far more than it carries; so :func:`decode_header` bounds the declared shape before a decoder
reads, let alone allocates, anything sized from it:

* with a :class:`ShapeLimit` (a server knows its cut's per-sample shape and the configured
  batch size; a client knows the shape of its last uplink), the shape must be
  ``[B, *sample_shape]`` with ``B`` in the limit's range, exactly;
* without one, the tensor rebuilt may hold at most :data:`MAX_EXPANSION` times the payload's
  own length in bytes, so a payload of ``n`` bytes can never make a decoder allocate more
  than ``MAX_EXPANSION * n`` bytes for its result.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from acpsl.errors import PayloadError

MAGIC = b"SL"
VERSION = 2
KIND_FORWARD = 0
KIND_GRAD = 1
KIND_LABELS = 2
KIND_NAMES = {KIND_FORWARD: "forward", KIND_GRAD: "gradient", KIND_LABELS: "labels"}
#: Wire code of the dtype of the tensor a payload rebuilds (header byte 5).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.uint8: 6,
    torch.bool: 7,
}
#: Inverse of :data:`DTYPE_CODES`.
CODE_DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}
#: Bytes of the header before the shape.
HEADER_FIXED = 7
#: Largest ndim a payload may declare (keeps a corrupt header from asking for huge shapes).
MAX_NDIM = 8
#: Largest number of elements a payload may declare (2**31 - 1: far above any cut tensor).
MAX_NUMEL = 2**31 - 1
#: Without a :class:`ShapeLimit`, the most bytes a payload may rebuild per byte it holds. The
#: legitimate expansions stay below it: dense float32 1x, 1-bit quantization 32x, top-k at
#: ``k/d = 1/1000`` about 700x, ACP-SL keeping 1 channel of 512 at most 512x, and an all-zero
#: L1 batch (the per-sample counts only) ``32 d / ceil(log2(d + 1))``: about 15,000x for the
#: 6,272 values of SmallCNN's cut, 2**16 at d of about 33,000. A cut larger than that gets its
#: all-zero L1 batches through a :class:`ShapeLimit` (every engine server sets one).
MAX_EXPANSION = 2**16


def header_size(ndim: int) -> int:
    """Bytes of the header of a payload for a tensor of ``ndim`` dimensions."""
    return HEADER_FIXED + 4 * ndim


def encode_header(
    *, scheme_id: int, kind: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> bytes:
    """Header bytes for a payload of ``kind`` produced by scheme ``scheme_id``.

    ``dtype`` is the dtype of the tensor the payload rebuilds (see :data:`DTYPE_CODES`).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensor has {len(shape)} dimensions; payloads allow at most {MAX_NDIM}")
    code = DTYPE_CODES.get(dtype)
    if code is None:
        raise ValueError(f"dtype {dtype} has no payload code (supported: {_dtype_names()})")
    return MAGIC + struct.pack(
        f"<BBBBB{len(shape)}I", VERSION, scheme_id, kind, code, len(shape), *shape
    )


def _dtype_names() -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in DTYPE_CODES)


@dataclass(frozen=True)
class ShapeLimit:
    """The shapes a decoder accepts: ``[B, *sample_shape]`` with ``min_batch <= B <= max_batch``.

    A server builds one from its cut (the client model's output shape per sample) and the
    configured batch size; a client checks a gradient against its last uplink with
    :meth:`exact`. :func:`decode_header` applies it before anything is decoded.

    Attributes:
        sample_shape: the per-sample shape (the tensor's shape without its batch dimension).
        max_batch: the largest batch accepted (the run's batch size).
        min_batch: the smallest batch accepted.
        source: what the limit comes from, for messages.
    """

    sample_shape: tuple[int, ...]
    max_batch: int
    min_batch: int = 1
    source: str = "the cut of this run"

    @classmethod
    def exact(cls, shape: Sequence[int]) -> ShapeLimit:
        """The limit that accepts ``shape`` only (``shape[0]`` is the batch): what a client
        checks a gradient against (its last uplink)."""
        dims = tuple(int(s) for s in shape)
        return cls(
            sample_shape=dims[1:], max_batch=dims[0], min_batch=dims[0], source="the last uplink"
        )

    def check(self, shape: tuple[int, ...], *, what: str) -> None:
        """Raise :class:`PayloadError` unless ``shape`` is ``[B, *sample_shape]`` with ``B`` in
        range."""
        if self.min_batch == self.max_batch:
            exact = (self.max_batch, *self.sample_shape)
            if tuple(shape) != exact:
                raise PayloadError(f"{what}: declares shape {shape}, {self.source} has {exact}")
            return
        want = "[B, " + ", ".join(str(s) for s in self.sample_shape) + "]"
        if len(shape) != 1 + len(self.sample_shape) or tuple(shape[1:]) != self.sample_shape:
            raise PayloadError(
                f"{what}: declares shape {shape}, {self.source} is {want}; "
                "the sender uses another model, cut or dataset"
            )
        if not self.min_batch <= shape[0] <= self.max_batch:
            allowed = (
                f"{self.max_batch}"
                if self.min_batch == self.max_batch
                else f"{self.min_batch}..{self.max_batch}"
            )
            raise PayloadError(
                f"{what}: declares a batch of {shape[0]} samples, {self.source} allows "
                f"{allowed} per batch"
            )


class PayloadReader:
    """A cursor over payload bytes that validates as it reads.

    Every read that would pass the end raises :class:`PayloadError`, and :meth:`finish`
    raises if bytes are left over, so both truncated and oversized payloads are rejected.

    Args:
        data: the payload.
        what: a short name of the payload used in error messages (e.g. "topk forward payload").
    """

    def __init__(self, data: bytes, *, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PayloadError(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = memoryview(bytes(data))
        self.what = what
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes."""
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError(
                f"{self.what} is truncated: needs {n} more bytes at offset {self.pos}, "
                f"has {self.remaining}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        """One unsigned byte."""
        return int(self.take(1)[0])

    def u16(self) -> int:
        """A little-endian uint16."""
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        """A little-endian uint32."""
        return int(struct.unpack("<I", self.take(4))[0])

    def f32(self) -> float:
        """One little-endian float32 as a Python float."""
        return float(struct.unpack("<f", self.take(4))[0])

    def float32(self, count: int) -> torch.Tensor:
        """``count`` little-endian float32 values as a 1-D tensor (a copy, writable)."""
        raw = self.take(4 * count)
        if count == 0:
            return torch.zeros(0, dtype=torch.float32)
        return readonly_tensor(np.frombuffer(raw, dtype="<f4")).clone()

    def array(self, count: int, dtype: str) -> np.ndarray:
        """``count`` values of NumPy ``dtype`` (e.g. ``"<u2"``), copied."""
        return self.view(count, dtype).copy()

    def view(self, count: int, dtype: str) -> np.ndarray:
        """``count`` values of NumPy ``dtype``: a read-only view of the payload (no copy)."""
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(itemsize * count), dtype=dtype)

    def finish(self) -> None:
        """Assert that every byte was read."""
        if self.remaining:
            raise PayloadError(
                f"{self.what} has {self.remaining} unexpected trailing bytes "
                f"(read {self.pos} of {len(self.data)})"
            )


def decode_header(
    reader: PayloadReader,
    *,
    scheme_id: int,
    kind: int,
    ndim: int | None = None,
    dtype: torch.dtype = torch.float32,
    limit: ShapeLimit | None = None,
) -> tuple[int, ...]:
    """Read and validate a header; returns the shape it declares.

    The shape is bounded before the caller reads the body (module docstring): by ``limit``
    when given, else by :data:`MAX_EXPANSION` times the payload's length.

    Args:
        reader: positioned at the start of the payload.
        scheme_id: the wire id the payload must carry.
        kind: the kind the payload must carry.
        ndim: if given, the number of dimensions the shape must have.
        dtype: the dtype the decoder rebuilds; the payload must declare it.
        limit: the shapes the caller accepts, if it knows them.

    Raises:
        PayloadError: wrong magic, version, scheme, kind, an unknown or unexpected dtype, an
            implausible shape, a shape outside ``limit``, or (without ``limit``) a shape of
            more than :data:`MAX_EXPANSION` times the payload's bytes.
    """
    what = reader.what
    _check_magic_and_version(reader, what=what)
    got_scheme = reader.u8()
    if got_scheme != scheme_id:
        raise PayloadError(
            f"{what}: payload was made by scheme id {got_scheme}, decoder is scheme id {scheme_id}"
        )
    got_kind = reader.u8()
    if got_kind != kind:
        raise PayloadError(
            f"{what}: payload kind is {KIND_NAMES.get(got_kind, got_kind)!r}, "
            f"expected {KIND_NAMES.get(kind, kind)!r}"
        )
    code = reader.u8()
    got_dtype = CODE_DTYPES.get(code)
    if got_dtype is None:
        raise PayloadError(f"{what}: unknown dtype code {code} (known: 0-{max(CODE_DTYPES)})")
    if got_dtype != dtype:
        raise PayloadError(
            f"{what}: payload declares dtype {str(got_dtype).removeprefix('torch.')}, "
            f"this decoder rebuilds {str(dtype).removeprefix('torch.')}"
        )
    got_ndim = reader.u8()
    if got_ndim > MAX_NDIM or (ndim is not None and got_ndim != ndim):
        expected = f"{ndim}" if ndim is not None else f"at most {MAX_NDIM}"
        raise PayloadError(f"{what}: declares {got_ndim} dimensions, expected {expected}")
    shape = tuple(int(v) for v in struct.unpack(f"<{got_ndim}I", reader.take(4 * got_ndim)))
    numel = math.prod(shape)
    if numel > MAX_NUMEL:
        raise PayloadError(f"{what}: declared shape {shape} is implausibly large")
    if limit is not None:
        limit.check(shape, what=what)
    else:
        check_expansion(shape, dtype=dtype, size=len(reader.data), what=what)
    return shape


def check_expansion(shape: tuple[int, ...], *, dtype: torch.dtype, size: int, what: str) -> None:
    """Refuse a ``size``-byte payload that declares a tensor of more than
    :data:`MAX_EXPANSION` times ``size`` bytes (see the module docstring).

    Raises:
        PayloadError: naming the declared shape, its bytes and the payload's.
    """
    rebuilt = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if rebuilt > MAX_EXPANSION * size:
        raise PayloadError(
            f"{what}: declares shape {shape} ({rebuilt:,} bytes) in a payload of {size} bytes, "
            f"more than {MAX_EXPANSION}x what it holds; refused (a decoder that expected this "
            "shape would accept it: give it a ShapeLimit)"
        )


def _check_magic_and_version(reader: PayloadReader, *, what: str) -> None:
    """Read the first 3 bytes of a header: the magic and the format version.

    Raises:
        PayloadError: not an acpsl payload, or another format version.
    """
    magic = bytes(reader.take(2))
    if magic != MAGIC:
        raise PayloadError(
            f"{what}: bad magic {magic!r} (expected {MAGIC!r}); not an acpsl payload"
        )
    version = reader.u8()
    if version != VERSION:
        raise PayloadError(f"{what}: format version {version}, this acpsl reads version {VERSION}")


def peek_shape(data: bytes | bytearray | memoryview, *, what: str) -> tuple[int, ...]:
    """The shape a payload's header declares, read without decoding anything else.

    Checks the magic, version and ndim only (not the scheme, kind or dtype, which the decoder
    checks), so a server can refuse a payload of the wrong shape before any decoder runs.

    Raises:
        PayloadError: not an acpsl payload of this version, or a truncated header.
    """
    # only the header is read: no copy of a (possibly large) body
    reader = PayloadReader(bytes(memoryview(data)[: header_size(MAX_NDIM)]), what=what)
    _check_magic_and_version(reader, what=what)
    reader.take(3)  # scheme, kind, dtype: the decoder's to check
    ndim = reader.u8()
    if ndim > MAX_NDIM:
        raise PayloadError(f"{what}: declares {ndim} dimensions, expected at most {MAX_NDIM}")
    return tuple(int(v) for v in struct.unpack(f"<{ndim}I", reader.take(4 * ndim)))


def float32_bytes(values: torch.Tensor) -> bytes:
    """Raw little-endian float32 bytes of ``values`` (any shape, flattened in C order)."""
    return float32_array(values).tobytes()


def float32_array(values: torch.Tensor) -> np.ndarray:
    """``values`` as a C-contiguous little-endian float32 NumPy array (no copy when it already
    is one on the CPU): what :func:`float32_bytes` would return, as a buffer that
    ``b"".join`` copies straight into a payload (one copy instead of two)."""
    arr = values.detach().to("cpu", torch.float32).contiguous().numpy()
    return arr.astype("<f4", copy=False)


def readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the memory of a read-only NumPy view of a payload.

    Only for reading or copying (``.clone()``, a multi-threaded copy, or an op that makes a new
    tensor): writing to it would write to immutable ``bytes``. ``torch.from_numpy`` warns about
    non-writable arrays; here that is intended, so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def pack_bits(mask: torch.Tensor) -> bytes:
    """Pack a boolean tensor (flattened) into ``ceil(n / 8)`` bytes, least-significant bit first."""
    flat = mask.detach().to("cpu").reshape(-1).numpy().astype(bool)
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_bits(data: bytes | memoryview, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a boolean tensor.

    Raises:
        PayloadError: if ``data`` is not exactly ``ceil(n / 8)`` bytes or a padding bit is set.
    """
    nbytes = (n + 7) // 8
    if len(data) != nbytes:
        raise PayloadError(f"bit mask of {n} bits needs {nbytes} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    if n % 8 and int(raw[-1]) >> (n % 8):
        raise PayloadError("bit mask has padding bits set; payload is corrupt")
    bits = np.unpackbits(raw, count=n, bitorder="little")
    return torch.from_numpy(bits.view(bool))
