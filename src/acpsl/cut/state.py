"""Safe, pickle-free bytes for a ``state_dict`` (client-model hand-off, aggregation, checkpoints).

Split learning moves the client model between clients (sequential SL) or to and from an
aggregator (SplitFed). Those transfers are traffic like the smashed data, so they go through
bytes whose length is counted (``bytes_model``). ``torch.save`` would use pickle, which runs
arbitrary code on load; this codec stores only names, dtypes, shapes and raw little-endian
data, so decoding untrusted bytes can at worst raise :class:`~acpsl.errors.PayloadError`.

This is its own format, not the ``b"SL"`` header of :mod:`acpsl.cut.payload`: a state holds
many tensors of mixed dtypes, so each tensor's dtype and shape are in the skeleton. Layout::

    b"SD" | version u8 | skeleton length u32 | skeleton (UTF-8 JSON) | tensor data

The skeleton is the state's tree in JSON. Containers are tagged so their types survive the
round trip (JSON alone would turn integer keys, such as an optimizer's parameter ids, into
strings): ``{"d": [[key, value], ...]}`` for a dict, ``{"l": [...]}`` a list, ``{"t": [...]}``
a tuple, ``{"T": [dtype, shape]}`` a tensor whose bytes follow in order of appearance, and
``{"N": [dtype, shape]}`` a NumPy array. Plain JSON scalars (``int``, ``float``, ``str``,
``bool``, ``None``) are stored as themselves. Decoding checks every tag, dtype and shape and
that the data is consumed exactly.

Hostile input. Decoding raises :class:`~acpsl.errors.PayloadError` and nothing else, with
bounded work: the skeleton's JSON nesting is measured (one vectorized pass) before it is
parsed, so a deeply nested skeleton cannot exhaust Python's recursion limit; containers
deeper than :data:`MAX_DEPTH`, integers outside the 64-bit range (or too long for Python to
parse), and shapes over :data:`~acpsl.cut.payload.MAX_NUMEL` values are refused.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from acpsl.cut.payload import MAX_NUMEL, PayloadReader
from acpsl.errors import PayloadError

MAGIC = b"SD"
VERSION = 1
#: Deepest container nesting accepted on decode (a guard against hostile skeletons).
MAX_DEPTH = 32
#: Deepest JSON nesting of a skeleton: a container of the tree is at most 3 JSON levels
#: (``{"d": [[key, value], ...]}``) and a tensor entry 3 more (``{"T": [dtype, [shape]]}``).
MAX_JSON_DEPTH = 3 * MAX_DEPTH + 6
#: Range of the integers a skeleton may hold (int64 and uint64 values).
INT_RANGE = (-(2**63), 2**64 - 1)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')

#: dtype name -> (torch dtype, little-endian NumPy dtype of the raw bytes).
_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float64": (torch.float64, "<f8"),
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"),  # NumPy has no bfloat16: its raw 16 bits as int16
    "int64": (torch.int64, "<i8"),
    "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"),
    "int8": (torch.int8, "<i1"),
    "uint8": (torch.uint8, "<u1"),
    "bool": (torch.bool, "|b1"),
}
_TORCH_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items()}
_NUMPY_DTYPES = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "<i1",
    "uint64": "<u8",
    "uint32": "<u4",
    "uint16": "<u2",
    "uint8": "<u1",
    "bool": "|b1",
}


def encode_state_dict(state: Mapping[str, Any] | Any) -> bytes:
    """Encode a state (a model's or optimizer's ``state_dict``, or any tree of them) to bytes.

    Args:
        state: a tree of dicts (keys ``str``, ``int``, ``float``, ``bool`` or ``None``), lists,
            tuples, tensors, NumPy arrays and JSON scalars.

    Returns:
        The encoded bytes; ``len()`` of them is what a transfer of this state costs.

    Raises:
        TypeError: if the tree holds something else (a module, a function, an object).
    """
    blobs: list[bytes] = []
    skeleton = _encode_node(state, blobs, depth=0)
    text = json.dumps(skeleton, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return MAGIC + struct.pack("<BI", VERSION, len(text)) + text + b"".join(blobs)


def decode_state_dict(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes made by :func:`encode_state_dict` (tensors come back on the CPU).

    Raises:
        PayloadError: bad magic or version, malformed skeleton, unknown dtype, implausible
            shape, truncated data or trailing bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"state payload: expected bytes, got {type(data).__name__}")
    reader = PayloadReader(bytes(data), what="state payload")
    magic = bytes(reader.take(2))
    if magic != MAGIC:
        raise PayloadError(f"state payload: bad magic {magic!r} (expected {MAGIC!r})")
    version = reader.u8()
    if version != VERSION:
        raise PayloadError(f"state payload: format version {version}, this acpsl reads {VERSION}")
    length = reader.u32()
    raw = bytes(reader.take(length))
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise PayloadError(
            f"state payload: skeleton nested deeper than {MAX_DEPTH} levels (JSON depth {depth})"
        )
    try:
        skeleton = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"state payload: skeleton is not valid JSON ({exc})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise PayloadError(f"state payload: a skeleton integer cannot be parsed ({exc})") from None
    except RecursionError:  # not reached after the depth check; a last guard
        raise PayloadError(
            f"state payload: skeleton nested deeper than {MAX_DEPTH} levels"
        ) from None
    out = _decode_node(skeleton, reader, depth=0)
    reader.finish()
    return out


# ------------------------------------------------------------------------------ encoding
def _encode_node(node: Any, blobs: list[bytes], *, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError(f"state is nested deeper than {MAX_DEPTH} levels")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, torch.Tensor):
        return {"T": _encode_tensor(node, blobs)}
    if isinstance(node, np.ndarray):
        return {"N": _encode_array(node, blobs)}
    if isinstance(node, np.generic):
        return node.item()
    if isinstance(node, Mapping):
        items = []
        for key, value in node.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"state dict key {key!r} of type {type(key).__name__} unsupported")
            items.append([key, _encode_node(value, blobs, depth=depth + 1)])
        return {"d": items}
    if isinstance(node, list):
        return {"l": [_encode_node(v, blobs, depth=depth + 1) for v in node]}
    if isinstance(node, tuple):
        return {"t": [_encode_node(v, blobs, depth=depth + 1) for v in node]}
    raise TypeError(f"cannot encode {type(node).__name__} in a state payload")


def _encode_tensor(tensor: torch.Tensor, blobs: list[bytes]) -> list[Any]:
    name = _TORCH_NAMES.get(tensor.dtype)
    if name is None:
        raise TypeError(f"tensor dtype {tensor.dtype} is not supported by the state codec")
    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    blobs.append(t.numpy().astype(_DTYPES[name][1], copy=False).tobytes())
    return [name, list(tensor.shape)]


def _encode_array(array: np.ndarray, blobs: list[bytes]) -> list[Any]:
    name = array.dtype.name
    if name not in _NUMPY_DTYPES:
        raise TypeError(f"NumPy dtype {array.dtype} is not supported by the state codec")
    blobs.append(np.ascontiguousarray(array).astype(_NUMPY_DTYPES[name], copy=False).tobytes())
    return [name, list(array.shape)]


# ------------------------------------------------------------------------------ decoding
def _json_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting of the JSON text ``raw`` (brackets inside strings ignored),
    in one vectorized pass: what :func:`json.loads` would recurse into."""
    text = _JSON_STRING.sub(b'""', raw)
    codes = np.frombuffer(text, dtype=np.uint8)
    steps = np.zeros(codes.size, dtype=np.int64)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _check_int(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            shown = str(value) if abs(value) < 10**30 else f"of {len(str(abs(value)))} digits"
            raise PayloadError(f"state payload: integer {shown} is outside the 64-bit range")


def _decode_node(node: Any, reader: PayloadReader, *, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise PayloadError(f"state payload: nested deeper than {MAX_DEPTH} levels")
    if node is None or isinstance(node, (bool, int, float, str)):
        _check_int(node)
        return node
    if not (isinstance(node, dict) and len(node) == 1):
        raise PayloadError(f"state payload: malformed skeleton node {str(node)[:60]!r}")
    ((tag, body),) = node.items()
    if tag == "T":
        name, shape = _dtype_and_shape(body, _DTYPES)
        torch_dtype, np_dtype = _DTYPES[name]
        values = reader.array(_numel(shape), np_dtype).reshape(shape)
        if name == "bfloat16":
            return torch.from_numpy(values.astype(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(values).to(torch_dtype)
    if tag == "N":
        name, shape = _dtype_and_shape(body, _NUMPY_DTYPES)
        return reader.array(_numel(shape), _NUMPY_DTYPES[name]).reshape(shape).astype(name)
    if tag in ("l", "t"):
        if not isinstance(body, list):
            raise PayloadError(f"state payload: {tag!r} node must hold a list")
        items = [_decode_node(v, reader, depth=depth + 1) for v in body]
        return items if tag == "l" else tuple(items)
    if tag == "d":
        if not isinstance(body, list):
            raise PayloadError("state payload: dict node must hold a list of pairs")
        out: dict[Any, Any] = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise PayloadError("state payload: dict entry is not a [key, value] pair")
            key = pair[0]
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise PayloadError(f"state payload: dict key {str(key)[:60]!r} is not a scalar")
            _check_int(key)
            if key in out:
                raise PayloadError(f"state payload: duplicate dict key {key!r}")
            out[key] = _decode_node(pair[1], reader, depth=depth + 1)
        return out
    raise PayloadError(f"state payload: unknown skeleton tag {tag!r}")


def _dtype_and_shape(body: Any, table: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    if not (isinstance(body, list) and len(body) == 2 and isinstance(body[1], list)):
        raise PayloadError("state payload: a tensor entry must be [dtype, shape]")
    name, shape = body
    if not isinstance(name, str) or name not in table:
        raise PayloadError(f"state payload: unsupported dtype {name!r}")
    if len(shape) > 8 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise PayloadError(f"state payload: invalid shape {shape!r}")
    if _numel(tuple(shape)) > MAX_NUMEL:
        raise PayloadError(f"state payload: shape {shape} is implausibly large")
    return name, tuple(shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
