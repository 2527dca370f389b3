"""16-lane building blocks for the kernels: masks, compress (pack the kept lanes) and expand.

Selecting the non-zeros or the top-k candidates of a row is a *compress* (write the kept
lanes of 16 values contiguously), and rebuilding a dense row from a bit mask is an *expand*.
Written as scalar loops these are branch-bound (a 50 %-dense mask mispredicts every other
value). AVX-512 does each in one instruction (``vcompressps`` / ``vexpandps``); LLVM emits
them for its ``llvm.masked.compressstore`` / ``llvm.masked.expandload`` intrinsics, which
Numba's :func:`numba.extending.intrinsic` lets us call.

On a CPU without AVX-512 (``SIMD`` is ``False``) LLVM would lower those intrinsics to one
branch per lane, slower than a branch-free scalar loop; there compress and expand are bound
to branch-free scalar versions instead. The masks are plain LLVM vector compares, which any
x86-64 (and other targets) lowers to a few vector instructions, so they are used on every
CPU (their scalar loops, a bit per lane, took twice as long on an AVX2-only AMD EPYC). The
scalar expand moves float bits as int32 and masks them (``bits & -keep``) rather than
selecting between a value and zero, which LLVM compiled to a branch that mispredicts every
other lane of a half-dense row (3-10x slower). Both satisfy the contracts below and are
tested against each other; :data:`SIMD` says which compress/expand this process compiled.

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
  ``j`` on if lane ``q`` is kept, else 0, for all 16 lanes. May read ``src[j : j + 16]``
  whatever the bits (the AVX2 permutes do): where fewer than 16 values are left from ``j``,
  call ``expand_tail`` (same result, reads only ``popcount(bits)`` values).
* ``popcount(bits)``: the number of set bits.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from acpsl.kernels import block

LANES = 16


def _has_avx512() -> bool:
    """Whether the code Numba compiles in this process may use AVX-512F (host CPU features,
    or ``NUMBA_CPU_FEATURES`` when set)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else None
    if features is None:
        features = get_host_cpu_features()
    return "+avx512f" in str(features).split(",")


def _has_avx2() -> bool:
    """Whether the code Numba compiles in this process may use AVX2 (as :func:`_has_avx512`)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else None
    if features is None:
        features = get_host_cpu_features()
    return "+avx2" in str(features).split(",")


#: Compress and expand run as AVX-512 instructions (else as AVX2 permutes or scalar loops).
SIMD = _has_avx512()
#: Without AVX-512, compress and expand run as AVX2 permutes (``vpermps``) of 8 lanes.
AVX2 = not SIMD and _has_avx2()

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
    lanes = vec_t.count
    return builder.shuffle_vector(
        first, undef, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
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


def _lane_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each 8-bit mask ``m``: ``PACK[8 m + t]``, the lane of the ``t``-th kept lane (the
    compress permutation; 7 past the last), and ``SPREAD[8 m + q]``, the number of kept lanes
    before lane ``q`` (the expand permutation)."""
    pack = np.full((256, 8), 7, np.int32)
    spread = np.zeros((256, 8), np.int32)
    for m in range(256):
        kept = [q for q in range(8) if m >> q & 1]
        pack[m, : len(kept)] = kept
        for q in range(8):
            spread[m, q] = sum(m >> r & 1 for r in range(q))
    return pack.reshape(-1), spread.reshape(-1)


PACK, SPREAD = _lane_tables()
_F32X8 = ir.VectorType(ir.FloatType(), 8)
_I32X8 = ir.VectorType(ir.IntType(32), 8)


def _lane_table(builder, name, table):  # type: ignore[no-untyped-def]
    """``table`` (256 rows of 8 int32) as a constant global of the function's LLVM module."""
    try:
        return builder.module.get_global(name)
    except KeyError:
        pass
    rows = ir.ArrayType(_I32X8, 256)
    glob = ir.GlobalVariable(builder.module, rows, name=name)
    glob.linkage = "internal"
    glob.global_constant = True
    glob.align = 32
    glob.initializer = ir.Constant(
        rows, [ir.Constant(_I32X8, [int(v) for v in table[8 * m : 8 * m + 8]]) for m in range(256)]
    )
    return glob


def _half(builder, bits, half):  # type: ignore[no-untyped-def]
    """Bits ``8 half .. 8 half + 7`` of the int64 ``bits``, as an int64."""
    return builder.and_(builder.lshr(bits, ir.Constant(_I64, 8 * half)), ir.Constant(_I64, 0xFF))


def _row(builder, table, byte):  # type: ignore[no-untyped-def]
    """Row ``byte`` of a lane table as an ``<8 x i32>``."""
    zero = ir.Constant(ir.IntType(32), 0)
    return builder.load(builder.gep(table, [zero, byte]), align=32)


def _permps(builder, vec, perm):  # type: ignore[no-untyped-def]
    permps = _llvm_function(builder, "llvm.x86.avx2.permps", _F32X8, [_F32X8, _I32X8])
    return builder.call(permps, [vec, perm])


def _ctpop(builder, value):  # type: ignore[no-untyped-def]
    return builder.call(_llvm_function(builder, "llvm.ctpop.i64", _I64, [_I64]), [value])


def _ptr8(context, builder, array_type, array, index, vec_t):  # type: ignore[no-untyped-def]
    ptr = _element_ptr(context, builder, array_type, array, index)
    return builder.bitcast(ptr, vec_t.as_pointer())


@intrinsic
def _compress_values_avx2(typingctx, src, i, bits, dst, j):  # type: ignore[no-untyped-def]
    """AVX2 ``compress_values``: per 8 lanes, ``vpermps`` by the row of :data:`PACK` and an
    unaligned store of all 8 (the contract's spare slots take the extra ones)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        src_t, _, _, dst_t, _ = signature.args
        src_a, i_, bits_, dst_a, j_ = args
        table = _lane_table(builder, "acpsl_pack_lanes", PACK)
        for half in range(2):
            byte = _half(builder, bits_, half)
            at = builder.add(i_, ir.Constant(i_.type, 8 * half))
            vec = builder.load(_ptr8(context, builder, src_t, src_a, at, _F32X8), align=4)
            packed = _permps(builder, vec, _row(builder, table, byte))
            builder.store(packed, _ptr8(context, builder, dst_t, dst_a, j_, _F32X8), align=4)
            j_ = builder.add(j_, _ctpop(builder, byte))
        return context.get_dummy_value()

    return types.none(src, i, bits, dst, j), codegen


@intrinsic
def _compress_index_avx2(typingctx, base, bits, dst, j):  # type: ignore[no-untyped-def]
    """AVX2 ``compress_index``: the rows of :data:`PACK` are the kept lane numbers, so per 8
    lanes one widening add of ``base`` and an unaligned store of all 8."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        base_t, _, dst_t, _ = signature.args
        base_, bits_, dst_a, j_ = args
        elem_t = context.get_value_type(dst_t.dtype)
        vec_t = ir.VectorType(elem_t, 8)
        table = _lane_table(builder, "acpsl_pack_lanes", PACK)
        start = context.cast(builder, base_, base_t, dst_t.dtype)
        for half in range(2):
            byte = _half(builder, bits_, half)
            lanes = _row(builder, table, byte)
            if elem_t.width > 32:
                lanes = builder.zext(lanes, vec_t)
            elif elem_t.width < 32:
                lanes = builder.trunc(lanes, vec_t)
            first = builder.add(start, ir.Constant(elem_t, 8 * half))
            out = builder.add(lanes, _splat(builder, first, vec_t))
            builder.store(out, _ptr8(context, builder, dst_t, dst_a, j_, vec_t), align=4)
            j_ = builder.add(j_, _ctpop(builder, byte))
        return context.get_dummy_value()

    return types.none(base, bits, dst, j), codegen


@intrinsic
def _expand_values_avx2(typingctx, bits, src, j, dst, p):  # type: ignore[no-untyped-def]
    """AVX2 ``expand_values``: per 8 lanes, ``vpermps`` of the 8 values from the next one by
    the row of :data:`SPREAD`, zeroed where the lane is not kept. Reads ``src[j : j + 16]``
    whatever the bits: the caller checks there are 16 values left (else
    :func:`expand_tail`)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        _, src_t, _, dst_t, _ = signature.args
        bits_, src_a, j_, dst_a, p_ = args
        table = _lane_table(builder, "acpsl_spread_lanes", SPREAD)
        for half in range(2):
            byte = _half(builder, bits_, half)
            vec = builder.load(_ptr8(context, builder, src_t, src_a, j_, _F32X8), align=4)
            spread = _permps(builder, vec, _row(builder, table, byte))
            keep = builder.bitcast(builder.trunc(byte, ir.IntType(8)), ir.VectorType(_I1, 8))
            kept = builder.select(keep, spread, ir.Constant(_F32X8, None))
            at = builder.add(p_, ir.Constant(p_.type, 8 * half))
            builder.store(kept, _ptr8(context, builder, dst_t, dst_a, at, _F32X8), align=4)
            j_ = builder.add(j_, _ctpop(builder, byte))
        return context.get_dummy_value()

    return types.none(bits, src, j, dst, p), codegen


@block
def _mask_nonzero_scalar(src: np.ndarray, i: int) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64(src[i + q] != 0) << q
    return bits


@block
def _mask_finite_scalar(src: np.ndarray, i: int) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64(np.isfinite(src[i + q])) << q
    return bits


@block
def _mask_at_least_scalar(src: np.ndarray, i: int, floor: np.uint32) -> int:
    bits = 0
    for q in range(LANES):
        bits |= np.int64((src[i + q] & np.uint32(0x7FFFFFFF)) >= floor) << q
    return bits


@block
def _compress_values_scalar(src: np.ndarray, i: int, bits: int, dst: np.ndarray, j: int) -> None:
    for q in range(LANES):
        dst[j] = src[i + q]
        j += (bits >> q) & 1


@block
def _compress_index_scalar(base: int, bits: int, dst: np.ndarray, j: int) -> None:
    for q in range(LANES):
        dst[j] = base + q
        j += (bits >> q) & 1


@block
def _expand_values_scalar(bits: int, src: np.ndarray, j: int, dst: np.ndarray, p: int) -> None:
    if bits == 0:
        for q in range(LANES):
            dst[p + q] = 0
        return
    # Branch-free: read the value at j (clamped to the last one: j never passes it while a
    # lane is kept) as bits, keep them or clear them by the lane's bit.
    last = src.shape[0] - 1
    src_bits = src.view(np.int32)
    dst_bits = dst.view(np.int32)
    for q in range(LANES):
        bit = (bits >> q) & 1
        dst_bits[p + q] = src_bits[min(j, last)] & -np.int32(bit)
        j += bit


mask_nonzero = _mask_nonzero_simd
mask_finite = _mask_finite_simd
mask_at_least = _mask_at_least_simd
if SIMD:
    compress_values = _compress_values_simd
    compress_index = _compress_index_simd
    expand_values = _expand_values_simd
elif AVX2:
    compress_values = _compress_values_avx2
    compress_index = _compress_index_avx2
    expand_values = _expand_values_avx2
else:
    compress_values = _compress_values_scalar
    compress_index = _compress_index_scalar
    expand_values = _expand_values_scalar
expand_tail = _expand_values_scalar
