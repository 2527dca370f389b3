"""Index coding of per-sample selections (top-k, RandTopk, L1 non-zeros).

A selection is a boolean mask ``[B, d]``: which of each sample's ``d`` flattened values are
sent. The values themselves travel in row-major order of that mask (sample by sample, index
ascending), so the selection can be coded in either of two ways, whichever is smaller for the
payload at hand (a flag byte says which):

* :data:`MODE_PACKED` — the selected indices, sample-major and ascending, each at
  ``ceil(log2 d)`` bits (the papers' "offset encoding", RandTopk paper section 3.2), in one
  bit stream of ``ceil(total * w / 8)`` bytes;
* :data:`MODE_MASK` — the mask itself, ``ceil(B * d / 8)`` bytes. Cheaper as soon as more than
  one value in ``ceil(log2 d)`` is kept.

How many values each sample keeps is not in this block: fixed-``k`` schemes write ``k`` once,
L1 writes per-sample counts with :func:`encode_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from acpsl.cut.bitpack import pack_uint, packed_size, unpack_uint
from acpsl.cut.payload import PayloadReader
from acpsl.errors import PayloadError
from acpsl.kernels import bits as bit_kernels
from acpsl.kernels import launch
from acpsl.kernels.simd import LANES

MODE_PACKED = 0
MODE_MASK = 1


def index_width(d: int) -> int:
    """Bits per index for ``d`` positions: ``ceil(log2 d)``, at least 1."""
    if d < 1:
        raise ValueError(f"need at least one position, got d={d}")
    return max(1, (d - 1).bit_length())


def count_width(d: int) -> int:
    """Bits per count of kept values (0..d inclusive): ``ceil(log2 (d + 1))``, at least 1."""
    return max(1, int(d).bit_length())


def selection_mode(*, total: int, batch: int, d: int) -> int:
    """The mode :func:`encode_selection` uses for ``total`` kept values of ``batch * d``."""
    packed = packed_size(count=total, width=index_width(d))
    return MODE_MASK if (batch * d + 7) // 8 <= packed else MODE_PACKED


def selection_size(*, total: int, batch: int, d: int) -> int:
    """Exact bytes of the block :func:`encode_selection` writes: flag byte + the smaller code."""
    packed = packed_size(count=total, width=index_width(d))
    return 1 + min(packed, (batch * d + 7) // 8)


def encode_selection(
    positions: np.ndarray, *, batch: int, d: int, mask: np.ndarray | None = None
) -> bytes:
    """Encode a selection as flag byte + packed indices or bit mask.

    Args:
        positions: the selected flat positions ``b * d + i`` into the ``[B, d]`` batch, in
            ascending order (sample by sample, index ascending), as ``np.flatnonzero`` of the
            mask gives them.
        batch: ``B``.
        d: values per sample.
        mask: the same selection as a packed bit mask (uint8, ``ceil(B d / 8)`` bytes,
            least-significant bit first), if the caller has it; saves building it when the bit
            mask is the smaller code.
    """
    return b"".join(selection_parts(positions, batch=batch, d=d, mask=mask))


def selection_parts(
    positions: np.ndarray | None,
    *,
    batch: int,
    d: int,
    mask: np.ndarray | None = None,
    total: int | None = None,
) -> tuple[bytes, bytes | memoryview]:
    """:func:`encode_selection` as its two parts (flag byte, code), for a caller that joins
    them into a payload itself (one copy of the code instead of two).

    ``total`` (the number of positions) may replace ``positions`` when the caller gives the
    ``mask`` and the mask is the smaller code; otherwise the positions are needed.
    """
    if total is None:
        if positions is None:
            raise ValueError("selection_parts needs the positions or their total")
        total = int(positions.size)
    mode = selection_mode(total=total, batch=batch, d=d)
    if mode == MODE_MASK and mask is not None:
        return bytes([MODE_MASK]), mask.data
    if positions is None:
        raise ValueError("selection_parts needs the positions for this selection")
    if mode == MODE_MASK:
        built = np.zeros((batch * d + 7) // 8, dtype=np.uint8)
        bit_kernels.mask_of_positions(np.ascontiguousarray(positions), built)
        return bytes([MODE_MASK]), built.data
    return bytes([MODE_PACKED]), pack_uint(positions % d, width=index_width(d))


@dataclass(frozen=True)
class Selection:
    """A selection block read from a payload (by :func:`read_selection`), not yet expanded.

    Attributes:
        mode: :data:`MODE_PACKED` or :data:`MODE_MASK`.
        code: the block's bytes after the flag byte (a view of the payload).
        counts: values kept per sample, ``[B]`` int64.
        d: values per sample.
        what: the payload's name, for messages.
    """

    mode: int
    code: memoryview
    counts: np.ndarray
    d: int
    what: str

    @property
    def total(self) -> int:
        """Values kept in all."""
        return int(self.counts.sum())

    def positions(self) -> np.ndarray:
        """The selected flat positions into ``[B, d]``, ascending (int64).

        Raises:
            PayloadError: an index out of range or out of order, or a mask whose per-sample
                counts disagree with :attr:`counts`.
        """
        if self.mode == MODE_MASK:
            _, positions = self.scatter(np.zeros(self.total, np.float32), keep_positions=True)
            assert positions is not None
            return positions
        out = np.empty(self.total, dtype=np.int64)
        status = bit_kernels.positions_of_indices(
            np.frombuffer(self.code, dtype=np.uint8),
            index_width(self.d),
            self.d,
            self.counts,
            out,
        )
        self._check(status)
        return out

    def scatter(
        self, values: np.ndarray, *, keep_positions: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The dense float32 ``B * d`` array with ``values`` (in selection order, float32,
        :attr:`total` of them) at the selected positions, zero elsewhere; and the positions
        when ``keep_positions``.

        Raises:
            PayloadError: as :meth:`positions`.
        """
        batch = self.counts.shape[0]
        if self.mode == MODE_PACKED:
            positions = self.positions()
            out = np.zeros(batch * self.d, dtype=np.float32)
            bit_kernels.scatter_positions(positions, values, out)
            return out, positions if keep_positions else None
        out = np.empty(batch * self.d, dtype=np.float32)
        words = bit_kernels.stream_to_words64(self.code)
        if not keep_positions:
            status = launch(
                bit_kernels.scatter_mask_rows,
                words,
                self.d,
                self.counts,
                values,
                out,
                values=out.size,
            )
            self._check(status)
            return out, None
        positions = np.empty(self.total + LANES, dtype=np.int64)
        status = bit_kernels.scatter_mask(words, self.d, self.counts, values, out, positions)
        self._check(status)
        return out, positions[: self.total]

    def _check(self, status: int) -> None:
        if status == bit_kernels.OK:
            return
        if status == bit_kernels.BAD_COUNT:
            shown = self.counts.tolist()[:8]
            more = "..." if self.counts.size > 8 else ""
            problem = f"bit mask keeps another number of values than the declared {shown}{more}"
        elif status == bit_kernels.OUT_OF_RANGE:
            problem = f"an index is out of range for d={self.d}"
        elif status == bit_kernels.NOT_ASCENDING:
            problem = "indices are not strictly ascending per sample"
        else:
            problem = "the index block has padding bits set; payload is corrupt"
        raise PayloadError(f"{self.what}: {problem}")


def read_selection(reader: PayloadReader, *, counts: np.ndarray, batch: int, d: int) -> Selection:
    """Read the block written by :func:`encode_selection` (flag byte and code).

    Args:
        reader: positioned at the flag byte.
        counts: values kept per sample (``[B]`` integers), already read from the payload.
        batch: ``B``.
        d: values per sample.

    Raises:
        PayloadError: unknown or unexpected mode, or a truncated block. (The code itself is
            checked when it is expanded: :meth:`Selection.positions`, :meth:`Selection.scatter`.)
    """
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    total = int(counts.sum())
    mode = reader.u8()
    expected = selection_mode(total=total, batch=batch, d=d)
    if mode not in (MODE_PACKED, MODE_MASK):
        raise PayloadError(f"{reader.what}: unknown index coding mode {mode}")
    if mode != expected:
        raise PayloadError(
            f"{reader.what}: index coding mode {mode} for {total} of {batch}x{d} values; "
            f"an encoder writes mode {expected}"
        )
    size = selection_size(total=total, batch=batch, d=d) - 1
    return Selection(mode=mode, code=reader.take(size), counts=counts, d=d, what=reader.what)


def decode_selection(
    reader: PayloadReader, *, counts: np.ndarray, batch: int, d: int
) -> np.ndarray:
    """Read a block written by :func:`encode_selection`: the selected flat positions into
    ``[B, d]``, ascending (int64).

    Raises:
        PayloadError: unknown mode, wrong length, an index out of range or out of order, or a
            mask whose per-sample counts disagree with ``counts``.
    """
    return read_selection(reader, counts=counts, batch=batch, d=d).positions()


def positions_of(mask: torch.Tensor) -> np.ndarray:
    """Ascending flat positions of the ``True`` entries of a bool tensor (any shape)."""
    return np.flatnonzero(mask.detach().to("cpu").numpy())


def encode_counts(counts: np.ndarray, *, d: int) -> bytes:
    """Per-sample counts (each in ``0..d``) packed at :func:`count_width` bits."""
    return pack_uint(np.asarray(counts, dtype=np.int64), width=count_width(d))


def decode_counts(reader: PayloadReader, *, batch: int, d: int) -> np.ndarray:
    """Inverse of :func:`encode_counts`; raises :class:`PayloadError` on a count above ``d``."""
    width = count_width(d)
    counts = unpack_uint(
        reader.take(packed_size(count=batch, width=width)), count=batch, width=width
    )
    if counts.size and int(counts.max()) > d:
        raise PayloadError(f"{reader.what}: a sample claims {int(counts.max())} of {d} values")
    return counts


def counts_size(*, batch: int, d: int) -> int:
    """Exact bytes of :func:`encode_counts` for ``batch`` samples."""
    return packed_size(count=batch, width=count_width(d))
