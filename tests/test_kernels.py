"""The compiled kernels (acpsl.kernels) against naive reference loops and NumPy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

import acpsl.schemes as schemes
from acpsl.kernels import PARALLEL_MIN_VALUES, bits, launch, quant, simd, topk
from acpsl.schemes.l1 import row_groups

RNG_SEEDS = range(40)
#: Makes launch() use every thread torch has, however small the test batch.
ALL_THREADS = PARALLEL_MIN_VALUES


def naive_mask_bits(flags: np.ndarray) -> list[int]:
    """16-lane chunks of a bool vector as integers, lane q in bit q."""
    return [sum(int(flags[16 * t + q]) << q for q in range(16)) for t in range(flags.size // 16)]


@numba.njit
def _blocks(x, floor, simd_path):  # type: ignore[no-untyped-def]
    """Every block of acpsl.kernels.simd over a vector, through one of its two implementations."""
    chunks = x.shape[0] // 16
    keys = x.view(np.uint32)
    nonzero = np.empty(chunks, np.int64)
    finite = np.empty(chunks, np.int64)
    at_least = np.empty(chunks, np.int64)
    values = np.full(x.shape[0] + 16, -1.0, np.float32)
    index = np.full(x.shape[0] + 16, -1, np.int32)
    rebuilt = np.full(x.shape[0], -1.0, np.float32)
    j = 0
    for t in range(chunks):
        if simd_path:
            nonzero[t] = simd._mask_nonzero_simd(x, 16 * t)
            finite[t] = simd._mask_finite_simd(x, 16 * t)
            at_least[t] = simd._mask_at_least_simd(keys, 16 * t, floor)
        else:
            nonzero[t] = simd._mask_nonzero_scalar(x, 16 * t)
            finite[t] = simd._mask_finite_scalar(x, 16 * t)
            at_least[t] = simd._mask_at_least_scalar(keys, 16 * t, floor)
        if simd_path and simd.SIMD:
            simd._compress_values_simd(x, 16 * t, nonzero[t], values, j)
            simd._compress_index_simd(16 * t, nonzero[t], index, j)
        elif simd_path and simd.AVX2:
            simd._compress_values_avx2(x, 16 * t, nonzero[t], values, j)
            simd._compress_index_avx2(16 * t, nonzero[t], index, j)
        else:
            simd._compress_values_scalar(x, 16 * t, nonzero[t], values, j)
            simd._compress_index_scalar(16 * t, nonzero[t], index, j)
        j += simd.popcount(nonzero[t])
    k = 0
    packed = values[:j].copy()  # nothing to spare past the last value
    for t in range(chunks):
        if simd_path and simd.SIMD:
            simd._expand_values_simd(nonzero[t], packed, k, rebuilt, 16 * t)
        elif simd_path and simd.AVX2 and k + 16 <= packed.shape[0]:
            simd._expand_values_avx2(nonzero[t], packed, k, rebuilt, 16 * t)
        else:
            simd._expand_values_scalar(nonzero[t], packed, k, rebuilt, 16 * t)
        k += simd.popcount(nonzero[t])
    return nonzero, finite, at_least, values[:j], index[:j], rebuilt


@pytest.mark.parametrize("simd_path", [True, False])
def test_simd_blocks_match_numpy(simd_path: bool) -> None:
    """Both implementations of every block (vector-compare masks and, on AVX-512 or AVX2,
    compress / expand intrinsics or permutes; branch-free scalar loops) against NumPy, on
    vectors with zeros, -0.0, NaN and infinities (the expand near the end of its values
    takes the permute's scalar tail)."""
    for seed in RNG_SEEDS:
        rng = np.random.default_rng(seed)
        n = 16 * int(rng.integers(1, 40))
        x = (rng.standard_normal(n) * (rng.random(n) < rng.random())).astype(np.float32)
        x[rng.random(n) < 0.05] = -0.0
        x[rng.random(n) < 0.02] = rng.choice([np.nan, np.inf, -np.inf])
        floor = np.uint32(rng.integers(0, 0x7F800000))
        nonzero, finite, at_least, values, index, rebuilt = _blocks(x, floor, simd_path)
        assert nonzero.tolist() == naive_mask_bits(x != 0)
        assert finite.tolist() == naive_mask_bits(np.isfinite(x))
        assert at_least.tolist() == naive_mask_bits((x.view(np.uint32) & 0x7FFFFFFF) >= floor)
        kept = x != 0
        np.testing.assert_array_equal(values, x[kept])
        assert index.tolist() == np.flatnonzero(kept).tolist()
        np.testing.assert_array_equal(rebuilt, np.where(kept, x, np.float32(0)))


def naive_topk(flat: np.ndarray, k: int) -> np.ndarray:
    """Flat positions of each row's k largest magnitudes, ties to the lowest index (sort)."""
    out = []
    for b, row in enumerate(flat):
        order = sorted(range(row.size), key=lambda i: (-abs(float(row[i])), i))
        out.extend(sorted(b * row.size + i for i in order[:k]))
    return np.array(out, dtype=np.int64)


def topk_kernel(flat: np.ndarray, k: int) -> np.ndarray:
    positions = np.empty(flat.shape[0] * k + simd.LANES, dtype=np.int64)
    topk.topk_rows(np.ascontiguousarray(flat, dtype=np.float32), k, positions)
    return positions[: flat.shape[0] * k]


@pytest.mark.parametrize(
    "kind", ["gauss", "relu", "integers", "subnormal", "adjacent", "scales", "constant"]
)
def test_topk_rows_match_a_sort(kind: str) -> None:
    """Radix select against a sort on every path: the sampled floor (long rows, few kept),
    the previous row's floor failing (rows of very different scale), ties at the k-th
    magnitude (integers, constant rows), keys differing only in their last bits (the third
    digit), subnormals."""
    rng = np.random.default_rng(len(kind))
    for d in (5, 37, 600, 1100):
        x = rng.standard_normal((6, d)).astype(np.float32)
        if kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "integers":
            x = rng.integers(-3, 4, (6, d)).astype(np.float32)
        elif kind == "subnormal":
            x = (x * 1e-40).astype(np.float32)
        elif kind == "adjacent":
            x = (1 + rng.integers(0, 4, (6, d)) * np.float32(2**-23)).astype(np.float32)
        elif kind == "scales":
            x = (x * np.float32(10.0) ** rng.integers(-6, 6, (6, 1))).astype(np.float32)
        elif kind == "constant":
            x[:] = -1.5
        for k in sorted({1, 2, max(1, d // 10), d // 4 or 1, d // 2 or 1, d - 1 or 1}):
            np.testing.assert_array_equal(topk_kernel(x, k), naive_topk(x, k), err_msg=f"{d} {k}")


def naive_pack(values: list[int], width: int) -> bytes:
    """Bit by bit, least-significant first."""
    stream = [(v >> i) & 1 for v in values for i in range(width)]
    stream += [0] * (-len(stream) % 8)
    return bytes(
        sum(bit << i for i, bit in enumerate(stream[j : j + 8])) for j in range(0, len(stream), 8)
    )


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 9, 12, 13, 17, 24, 31])
def test_pack_and_unpack_words_match_a_bit_loop(width: int) -> None:
    rng = np.random.default_rng(width)
    for count in (1, 7, 8, 9, 31, 32, 33, 100):
        values = rng.integers(0, 2**width, count, dtype=np.int64)
        words = bits.stream_words(count * width)
        bits.pack(values, width, words)
        stream = bits.words_to_stream(words, (count * width + 7) // 8).tobytes()
        assert stream == naive_pack(values.tolist(), width)
        back = np.empty(count, dtype=np.int64)
        assert bits.unpack(bits.stream_to_words(stream), width, back) == bits.OK
        np.testing.assert_array_equal(back, values)
        if (count * width) % 8:
            corrupt = stream[:-1] + bytes([stream[-1] | 0x80])
            assert bits.unpack(bits.stream_to_words(corrupt), width, back) == bits.BAD_PADDING


def sparse_batch(rng: np.random.Generator, batch: int, d: int) -> np.ndarray:
    x = rng.standard_normal((batch, d)) * (rng.random((batch, d)) < rng.random())
    return x.astype(np.float32)


def test_nonzero_rows_in_groups_and_scatter_back() -> None:
    """L1's kernels: per-group compaction of the non-zeros with their bit mask, and both
    rebuilds (with positions, and spread over threads), against NumPy; any d, any grouping."""
    for seed in RNG_SEEDS:
        rng = np.random.default_rng(seed)
        batch, d = int(rng.integers(1, 9)), int(rng.integers(1, 150))
        x = sparse_batch(rng, batch, d)
        kept = x != 0
        starts = np.array(row_groups(batch=batch, d=d, groups=int(rng.integers(1, 4))))
        assert all((start * d) % 64 == 0 for start in starts[:-1].tolist())
        counts = np.empty(batch, dtype=np.int64)
        values = np.empty(batch * d + simd.LANES * starts.size, dtype=np.float32)
        totals = np.empty(starts.size - 1, dtype=np.int64)
        mask = bits.mask_words(batch * d)
        assert launch(
            topk.nonzero_rows, x, starts, counts, values, totals, mask, values=ALL_THREADS
        )
        np.testing.assert_array_equal(counts, kept.sum(axis=1))
        offsets = starts[:-1] * d + simd.LANES * np.arange(starts.size - 1)
        got = np.concatenate([values[o : o + n] for o, n in zip(offsets, totals)])
        np.testing.assert_array_equal(got, x[kept])
        stream = bits.words64_to_stream(mask, (batch * d + 7) // 8).tobytes()
        assert stream == np.packbits(kept.reshape(-1), bitorder="little").tobytes()
        words = bits.stream_to_words64(stream)
        dense = np.empty(batch * d, dtype=np.float32)
        positions = np.empty(int(counts.sum()) + simd.LANES, dtype=np.int64)
        assert bits.scatter_mask(words, d, counts, got, dense, positions) == bits.OK
        np.testing.assert_array_equal(dense, np.where(kept, x, 0).reshape(-1))
        np.testing.assert_array_equal(positions[: counts.sum()], np.flatnonzero(kept))
        dense2 = np.empty(batch * d, dtype=np.float32)
        assert (
            launch(bits.scatter_mask_rows, words, d, counts, got, dense2, values=ALL_THREADS)
            == bits.OK
        )
        np.testing.assert_array_equal(dense2, dense)
        if counts.sum():
            wrong = counts.copy()
            wrong[int(np.argmax(wrong))] -= 1
            short = got[:-1]
            assert bits.scatter_mask(words, d, wrong, short, dense, positions) == bits.BAD_COUNT
            assert (
                launch(bits.scatter_mask_rows, words, d, wrong, short, dense, values=ALL_THREADS)
                == bits.BAD_COUNT
            )
        bad = x.copy()
        bad[batch - 1, d - 1] = np.nan
        assert not launch(
            topk.nonzero_rows, bad, starts, counts, values, totals, mask, values=ALL_THREADS
        )


def naive_codes(row: np.ndarray, bits_: int) -> tuple[np.ndarray, np.float32, np.float32]:
    """Eq. 2 value by value with float32 scalars."""
    lo, hi = np.float32(row.min()), np.float32(row.max())
    step = np.float32((hi - lo) / np.float32(2**bits_))
    if not step > 0:
        step = np.float32(1)
    codes = [min(int(np.float32(np.float32(v - lo) / step)), 2**bits_ - 1) for v in row]
    return np.array(codes), lo, hi


@pytest.mark.parametrize("bits_", [1, 3, 8, 16])
def test_quant_kernels_match_eq2_value_by_value(bits_: int) -> None:
    rng = np.random.default_rng(bits_)
    x = rng.standard_normal((5, 77)).astype(np.float32)
    x[1] = np.maximum(x[1], 0)
    x[2] = 0.25  # max = min
    x[3] = np.clip(x[3], -1, 1) * np.float32(3e38)  # max - min overflows float32: float64
    lo, hi = np.empty(5, np.float32), np.empty(5, np.float32)
    codes = np.empty(x.shape, np.uint8 if bits_ <= 8 else np.uint16)
    assert launch(
        quant.encode_rows,
        x,
        bits_,
        lo,
        hi,
        lo.view(np.int32),
        hi.view(np.int32),
        codes,
        values=ALL_THREADS,
    )
    for b in (0, 1, 2, 4):
        ref, ref_lo, ref_hi = naive_codes(x[b], bits_)
        np.testing.assert_array_equal(codes[b], ref)
        assert (lo[b], hi[b]) == (ref_lo, ref_hi)
    span = np.float64(hi[3]) - np.float64(lo[3])
    ref64 = np.minimum(
        np.floor((x[3].astype(np.float64) - lo[3]) / (span / 2**bits_)), 2**bits_ - 1
    )
    np.testing.assert_array_equal(codes[3], ref64)
    out = np.empty(x.shape, np.float32)
    launch(quant.decode_rows, codes, lo, hi, bits_, out, values=ALL_THREADS)
    for b in (0, 1, 2, 4):
        step = np.float32((hi[b] - lo[b]) / np.float32(2**bits_))
        centre = np.float32(lo[b] + step / np.float32(2))
        expect = np.array([np.float32(np.float32(c) * step) + centre for c in codes[b]])
        np.testing.assert_array_equal(out[b], expect.astype(np.float32))
    for value in (np.nan, np.inf, -np.inf):
        bad = x.copy()
        bad[4, 10] = value
        assert not launch(
            quant.encode_rows,
            *(bad, bits_, lo, hi, lo.view(np.int32), hi.view(np.int32), codes),
            values=ALL_THREADS,
        )


FALLBACK_SCRIPT = """
import hashlib, json, sys, torch
import acpsl.schemes as schemes
from acpsl.kernels import simd
gen = torch.Generator().manual_seed(0)
x = torch.randn(16, 64, 7, 7, generator=gen).relu()
out = {"simd": [simd.SIMD, simd.AVX2]}
for name, params in [("topk", {}), ("randtopk", {"alpha": 0.3}), ("quant", {"bits": 5}),
                     ("l1", {}), ("topk", {"k": 20})]:
    client, server = schemes.create(name, **params), schemes.create(name, **params)
    payload = client.compress(x)
    rebuilt = server.decompress(payload)
    key = name + json.dumps(params)
    out[key] = [hashlib.sha256(payload).hexdigest(),
                hashlib.sha256(rebuilt.numpy().tobytes()).hexdigest()]
print(json.dumps(out))
"""


def _without(features: str, prefixes: tuple[str, ...]) -> str:
    """A CPU feature string with the features starting with ``prefixes`` turned off."""
    return ",".join("-" + f[1:] if f.startswith(prefixes) else f for f in features.split(",") if f)


@pytest.mark.skipif(not (simd.SIMD or simd.AVX2), reason="this CPU already runs the scalar blocks")
def test_fallbacks_give_the_same_bytes(tmp_path: Path) -> None:
    """Processes compiled for this CPU without AVX-512 (the AVX2 permutes) and without AVX2
    either (the scalar blocks) produce the same payloads and rebuilt tensors as this one."""
    features = str(numba.core.codegen.get_host_cpu_features())
    variants = [("native", {}, [simd.SIMD, simd.AVX2])]
    if simd.SIMD:
        variants.append(
            ("avx2", {"NUMBA_CPU_FEATURES": _without(features, ("+avx512",))}, [False, True])
        )
    scalar = _without(features, ("+avx512", "+avx2"))
    variants.append(("scalar", {"NUMBA_CPU_FEATURES": scalar}, [False, False]))
    runs = {}
    for label, env, expected in variants:
        full = {
            **os.environ,
            **env,
            "NUMBA_CACHE_DIR": str(tmp_path / label),
            "OMP_NUM_THREADS": "1",
        }
        result = subprocess.run(
            [sys.executable, "-c", FALLBACK_SCRIPT],
            env=full,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        runs[label] = json.loads(result.stdout.strip().splitlines()[-1])
        assert runs[label].pop("simd") == expected
    for label in runs:
        assert runs[label] == runs["native"], label


@numba.njit(parallel=True)
def _threads_of_launch(out: np.ndarray) -> int:
    """The thread count a parallel kernel runs with (test probe)."""
    for i in numba.prange(out.size):
        out[i] = i
    return numba.get_num_threads()


def test_launch_follows_torch_threads_and_keeps_small_batches_on_one() -> None:
    before = torch.get_num_threads()
    out = np.empty(8, np.int64)
    try:
        torch.set_num_threads(1)
        assert launch(_threads_of_launch, out, values=ALL_THREADS) == 1
        torch.set_num_threads(2)
        numba_before = numba.get_num_threads()
        used = launch(_threads_of_launch, out, values=ALL_THREADS)
        assert used == min(2, numba.config.NUMBA_NUM_THREADS)
        assert launch(_threads_of_launch, out, values=PARALLEL_MIN_VALUES - 1) == 1
        assert numba.get_num_threads() == numba_before and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


THREADS_SCRIPT = """
import json, numba, torch
import acpsl.schemes as schemes
user = 1 if torch.get_num_threads() > 1 else 2  # anything but the default
torch.set_num_threads(user)
x = torch.randn(32, 64, 8, 8, generator=torch.Generator().manual_seed(0)).relu()
labels = torch.arange(32) % 10
seen = []
for name in schemes.names():
    client, server = schemes.create(name), schemes.create(name)
    client.set_iteration(t=1, total=2)
    for step, call in (
        ("compress", lambda: client.compress(x, labels=labels)),
        ("decompress", lambda: server.decompress(data)),
        ("compress_grad", lambda: server.compress_grad(x)),
        ("decompress_grad", lambda: client.decompress_grad(grad)),
        ("inference", lambda: client.compress(x, training=False)),
    ):
        out = call()
        if step == "compress":
            data = out
        elif step == "compress_grad":
            grad = out
        seen.append([name, step, torch.get_num_threads()])
        torch.set_num_threads(user)  # so that every call is checked on its own
numba.set_num_threads(1)
torch.set_num_threads(2)
client, server = schemes.create("quant"), schemes.create("quant")
server.decompress(client.compress(x))
print(json.dumps({"user": user, "seen": seen, "numba": numba.get_num_threads()}))
"""


def test_codecs_never_change_the_callers_thread_counts() -> None:
    """Issue 10, defect 7: Numba's OpenMP layer set torch's thread count to
    ``NUMBA_NUM_THREADS`` on its first parallel launch. In a fresh process (the first launch
    is the one that did it), with a thread count that is not the default, every call of
    every scheme on a batch above :data:`PARALLEL_MIN_VALUES` leaves ``torch``'s thread
    count, and Numba's own, as the caller set them."""
    assert 32 * 64 * 8 * 8 >= PARALLEL_MIN_VALUES
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    result = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    changed = [entry for entry in out["seen"] if entry[2] != out["user"]]
    assert not changed, f"torch threads {out['user']} changed by: {changed}"
    assert len(out["seen"]) == 5 * len(schemes.names())
    assert out["numba"] == 1
