"""16-lane building blocks for the kernels: masks, compress (pack the kept lanes) and expand.

Selecting the non-zeros or the top-k candidates of a row is a *compress* (write the kept
lanes of 16 values contiguously), and rebuilding a dense row from a bit mask is an *expand*.
Written as scalar loops these are branch-bound (a 50 %-dense mask mispredicts every other
value). AVX-512 does each in one instruction (``vcompressps`` / ``vexpandps``); LLVM emits
them for its ``llvm.masked.compressstore`` / ``llvm.masked.expandload`` intrinsics, which
Numba's :func:`numba.extending.intrinsic` lets us call.

On a CPU without AVX-512 (``SIMD`` is ``False``) LLVM would lower those intrinsics to one
branch per lane, slower than a branch-free scalar loop; there the same names are bound to
branch-free scalar versions instead. Both satisfy the contracts below and are tested against
each other; :data:`SIMD` says which one this process compiled.

Contracts (``i``, ``j``, ``p`` are element offsets; ``bits`` holds 16 mask bits, lane ``q``
in bit ``q``):

* ``mask_nonzero(src, i)``: bits of ``src[i + q] != 0`` (float32 ``src``).
* ``mask_finite(src, i)``: bits of ``src[i + q]`` being finite (not NaN, not infinite).
* ``mask_at_least(src, i, floor)``: bits of ``(src[i + q] & 0x7FFFFFFF) >= floor`` (uint32
  ``src``: float32 bits; sign-cleared float bits are ordered like magnitudes).
* ``compress_values(src, i, bits, dst, j)``: the kept lanes of ``src[i : i + 16]`` in order
  to ``dst[j:]``. ``dst`` must have 16 slots to spare past the last kept value (the scalar
  version writes every lane and advances only on kept ones).
* ``compress_index(base, bits, dst, j)``: the same for the lane numbers ``base + q``.
* ``expand_values(bits, src, j, dst, p)``: ``dst[p + q] = `` the next value of ``src`` from
  ``j`` on if lane ``q`` is kept, else 0, for all 16 lanes. Reads exactly ``popcount(bits)``
  values of ``src``.
* ``popcount(bits)``: the number of set bits.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from acpsl.kernels import kernel

LANES = 16


def _has_avx512() -> bool:
    """Whether the code Numba compiles in this process may use AVX-512F (host CPU features,
    or ``NUMBA_CPU_FEATURES`` when set)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else None
    if features is None:
        features = get_host_cpu_features()
    return "+avx512f" in str(features).split(",")


#: Compress and expand run as AVX-512 instructions (else as branch-free scalar loops).
SIMD = _has_avx512()

_I1 = ir.IntType(1)
_I16 = ir.IntType(16)
_I64 = ir.IntType(64)
_MASK = ir.VectorType(_I1, LANES)


def _element_ptr(context, builder, array_type, array, index):  # type: ignore[no-untyped-def]
    """LLVM pointer to ``array[index]`` (C-contiguous 1-D array)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


def _vector_of(context, dtype):  # type: ignore[no-untyped-def]
    return ir.VectorType(context.get_value_type(dtype), LANES)


def _mask_bits(builder, mask):  # type: ignore[no-untyped-def]
    """A ``<16 x i1>`` mask as an int64 holding 16 bits."""
    return builder.zext(builder.bitcast(mask, _I16), _I64)


def _bits_mask(builder, bits):  # type: ignore[no-untyped-def]
    """The low 16 bits of an integer as a ``<16 x i1>`` mask."""
    return builder.bitcast(builder.trunc(bits, _I16), _MASK)


def _llvm_function(builder, name, ret, args):  # type: ignore[no-untyped-def]
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _load_lanes(context, builder, array_type, array, index):  # type: ignore[no-untyped-def]
    """The 16 elements ``array[index : index + 16]`` as one vector."""
    vec_t = _vector_of(context, array_type.dtype)
    ptr = _element_ptr(context, builder, array_type, array, index)
    return builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=4)


def _suffix(vector: ir.VectorType) -> str:
    element = vector.element
    kind = "f32" if isinstance(element, ir.FloatType) else f"i{element.width}"
    return f"v{LANES}{kind}"


@intrinsic
def _mask_nonzero_simd(typingctx, src, i):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vec = _load_lanes(context, builder, signature.args[0], args[0], args[1])
        return _mask_bits(builder, builder.fcmp_unordered("!=", vec, ir.Constant(vec.type, None)))

    return types.int64(src, i), codegen


@intrinsic
def _mask_finite_simd(typingctx, src, i):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vec = _load_lanes(context, builder, signature.args[0], args[0], args[1])
        vec_t = vec.type
        fabs = _llvm_function(builder, f"llvm.fabs.{_suffix(vec_t)}", vec_t, [vec_t])
        magnitude = builder.call(fabs, [vec])
        infinity = ir.Constant(vec_t, [float("inf")] * LANES)
        return _mask_bits(builder, builder.fcmp_ordered("<", magnitude, infinity))

    return types.int64(src, i), codegen


@intrinsic
def _mask_at_least_simd(typingctx, src, i, floor):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vec = _load_lanes(context, builder, signature.args[0], args[0], args[1])
        vec_t = vec.type
        keys = builder.and_(vec, ir.Constant(vec_t, [0x7FFFFFFF] * LANES))
        floor_value = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        splat = _splat(builder, floor_value, vec_t)
        return _mask_bits(builder, builder.icmp_unsigned(">=", keys, splat))

    return types.int64(src, i, floor), codegen


def _splat(builder, value, vec_t):  # type: ignore[no-untyped-def]
    """A vector with ``value`` in every lane."""
    undef = ir.Constant(vec_t, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        first, undef, ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _compress_store(builder, vec, out, bits):  # type: ignore[no-untyped-def]
    """Store the lanes of ``vec`` kept by the 16 ``bits`` contiguously at pointer ``out``."""
    store = _llvm_function(
        builder,
        f"llvm.masked.compressstore.{_suffix(vec.type)}",
        ir.VoidType(),
        [vec.type, out.type, _MASK],
    )
    builder.call(store, [vec, out, _bits_mask(builder, bits)])


@intrinsic
def _compress_values_simd(typingctx, src, i, bits, dst, j):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        src_t, _, _, dst_t, _ = signature.args
        vec = _load_lanes(context, builder, src_t, args[0], args[1])
        out = _element_ptr(context, builder, dst_t, args[3], args[4])
        _compress_store(builder, vec, out, args[2])
        return context.get_dummy_value()

    return types.none(src, i, bits, dst, j), codegen


@intrinsic
def _compress_index_simd(typingctx, base, bits, dst, j):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        _, _, dst_t, _ = signature.args
        elem_t = context.get_value_type(dst_t.dtype)
        vec_t = ir.VectorType(elem_t, LANES)
        start = context.cast(builder, args[0], signature.args[0], dst_t.dtype)
        lanes = builder.add(_splat(builder, start, vec_t), ir.Constant(vec_t, list(range(LANES))))
        out = _element_ptr(context, builder, dst_t, args[2], args[3])
        _compress_store(builder, lanes, out, args[1])
        return context.get_dummy_value()

    return types.none(base, bits, dst, j), codegen


@intrinsic
def _expand_values_simd(typingctx, bits, src, j, dst, p):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        _, src_t, _, dst_t, _ = signature.args
        vec_t = _vector_of(context, src_t.dtype)
        inp = _element_ptr(context, builder, src_t, args[1], args[2])
        load = _llvm_function(
            builder,
            f"llvm.masked.expandload.{_suffix(vec_t)}",
            vec_t,
            [inp.type, _MASK, vec_t],
        )
        vec = builder.call(load, [inp, _bits_mask(builder, args[0]), ir.Constant(vec_t, None)])
        out = builder.bitcast(
            _element_ptr(context, builder, dst_t, args[3], args[4]), vec_t.as_pointer()
        )
        builder.store(vec, out, align=4)
        return context.get_dummy_value()

    return types.none(bits, src, j, dst, p), codegen


@intrinsic
def popcount(typingctx, bits):  # type: ignore[no-untyped-def]
    """Set bits of an integer (``llvm.ctpop``: one instruction where the CPU has one)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        value = context.cast(builder, args[0], signature.args[0], types.int64)
        count = _llvm_function(builder, "llvm.ctpop.i64", _I64, [_I64])
        return builder.call(count, [value])

    return types.int64(bits), codegen


@kernel
def _mask_nonzero_scalar(src: np.ndarray, i: int) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64(src[i + q] != 0) << q
    return bits


@kernel
def _mask_finite_scalar(src: np.ndarray, i: int) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64(np.isfinite(src[i + q])) << q
    return bits


@kernel
def _mask_at_least_scalar(src: np.ndarray, i: int, floor: np.uint32) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64((src[i + q] & np.uint32(0x7FFFFFFF)) >= floor) << q
    return bits


@kernel
def _compress_values_scalar(src: np.ndarray, i: int, bits: int, dst: np.ndarray, j: int) -> None:
    for q in range(LANES):
        dst[j] = src[i + q]
        j += (bits >> q) & 1


@kernel
def _compress_index_scalar(base: int, bits: int, dst: np.ndarray, j: int) -> None:
    for q in range(LANES):
        dst[j] = base + q
        j += (bits >> q) & 1


@kernel
def _expand_values_scalar(bits: int, src: np.ndarray, j: int, dst: np.ndarray, p: int) -> None:
    if bits == 0:
        for q in range(LANES):
            dst[p + q] = 0
        return
    # Branch-free: read the value at j (clamped to the last one: j never passes it while a
    # lane is kept), keep it or not by the lane's bit.
    last = src.shape[0] - 1
    for q in range(LANES):
        bit = (bits >> q) & 1
        value = src[min(j, last)]
        dst[p + q] = value if bit else 0
        j += bit


if SIMD:
    mask_nonzero = _mask_nonzero_simd
    mask_finite = _mask_finite_simd
    mask_at_least = _mask_at_least_simd
    compress_values = _compress_values_simd
    compress_index = _compress_index_simd
    expand_values = _expand_values_simd
else:
    mask_nonzero = _mask_nonzero_scalar
    mask_finite = _mask_finite_scalar
    mask_at_least = _mask_at_least_scalar
    compress_values = _compress_values_scalar
    compress_index = _compress_index_scalar
    expand_values = _expand_values_scalar
