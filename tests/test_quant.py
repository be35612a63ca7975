"""Block formats: numpy references against gguf-py, Numba kernels against the references, quantizers
against gguf-py and ggml's reference code, and real tensors of the two real model files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from edgeinfer import quant
from edgeinfer.errors import GGUFError, UnsupportedTypeError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels.numba import dequant as nd

ALL_TYPES = quant.SUPPORTED_TYPES
GGUF_PY_DEQUANT = [t for t in ALL_TYPES if t != T.Q8_K]  # gguf-py has no Q8_K
GGUF_PY_QUANT = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
EXPECTED_TYPES = {
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS,
    T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0, T.MXFP4,
}  # fmt: skip

# fp16 scales every random block set starts with: zeros, subnormals, the largest finite values
SPECIAL_F16 = np.array([0.0, -0.0, 2.0**-24, -(2.0**-24), 2.0**-14, 65504.0, -65504.0, 1.0], np.float16)


def type_id(t: T) -> str:
    return t.name


def random_blocks(ggml_type: T, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random raw bytes for n_blocks blocks, with every float field finite (so are the results)."""
    rng = np.random.default_rng(seed)
    fmt = quant.get_format(ggml_type)
    raw = rng.integers(0, 256, n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    if ggml_type == T.F32:
        blocks[:] = rng.standard_normal(n_blocks).astype(np.float32) * 10.0 ** rng.integers(-30, 30, n_blocks)
    for name in blocks.dtype.names or ():
        field_dtype = blocks.dtype.fields[name][0]
        if field_dtype == np.dtype("<f2"):  # random finite fp16 bits: any sign, exponent 0..30
            h = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
            h = np.where((h & 0x7C00) == 0x7C00, h & np.uint16(0xBFFF), h)
            blocks[name] = h.view(np.float16)
            k = min(n_blocks, len(SPECIAL_F16))
            blocks[name][:k] = SPECIAL_F16[:k]
        elif field_dtype == np.dtype("<f4"):
            blocks[name] = rng.standard_normal(n_blocks).astype(np.float32)
    if ggml_type == T.MXFP4:  # E8M0 exponents whose values stay finite (2^(e - 128) * 12)
        blocks["e"] = rng.integers(0, 250, n_blocks)
    if ggml_type == T.IQ1_M:  # the fp16 scale is the top nibbles of the four scale words: finite bits
        h = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        h = np.where((h & 0x7C00) == 0x7C00, h & np.uint16(0xBFFF), h).astype(np.uint16)
        for k in range(4):
            blocks["scales"][:, k] = (blocks["scales"][:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
    return raw


def n_test_blocks(ggml_type: T) -> int:
    return 8192 if quant.get_format(ggml_type).block_size == 1 else 512


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal float32 arrays, bit for bit (so -0.0 != 0.0), NaN matching NaN whatever its payload."""
    assert actual.dtype == np.float32 and expected.dtype == np.float32
    assert actual.shape == expected.shape
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), "NaN in different places"
    a, e = actual.view(np.uint32)[~nan_a], expected.view(np.uint32)[~nan_e]
    bad = np.flatnonzero(a != e)
    if bad.size:
        first_a, first_e = a[bad[0] : bad[0] + 1].view(np.float32), e[bad[0] : bad[0] + 1].view(np.float32)
        raise AssertionError(f"{bad.size} values differ, the first: {first_a} != {first_e}")


def gguf_py_dequantize(raw_rows: np.ndarray, ggml_type: T) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(raw_rows, ggml_type), dtype=np.float32)


# -- the registry --------------------------------------------------------------------------------------


def test_every_required_format_is_registered():
    assert set(ALL_TYPES) == EXPECTED_TYPES


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=type_id)
def test_format_sizes_follow_gguf_constants(ggml_type):
    fmt = quant.get_format(ggml_type)
    assert fmt.ggml_type is ggml_type
    assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[ggml_type]
    assert fmt.block_dtype.itemsize == fmt.type_size
    assert quant.is_supported(ggml_type) and quant.is_supported(int(ggml_type))
    assert quant.row_bytes(ggml_type, 4 * fmt.block_size) == 4 * fmt.type_size


def test_row_bytes():
    assert quant.row_bytes(T.Q4_K, 2048) == 8 * 144
    assert quant.row_bytes(T.Q8_0, 64) == 68
    assert quant.row_bytes(T.F32, 3) == 12
    with pytest.raises(ValueError, match="Q4_0 row holds a multiple of 32 values, not 100"):
        quant.row_bytes(T.Q4_0, 100)


@pytest.mark.parametrize("ggml_type", [T.NVFP4, T.Q1_0, T.Q8_1, T.I32])
def test_unsupported_type_is_a_clear_error(ggml_type):
    assert not quant.is_supported(ggml_type)
    with pytest.raises(UnsupportedTypeError) as err:
        quant.get_format(ggml_type)
    message = str(err.value)
    assert ggml_type.name in message and "Supported types: F32, F16, Q4_0" in message
    raw = np.zeros(1024, np.uint8)
    for dequantize in (quant.dequantize, nd.dequantize):
        expected = f"'blk.3.ffn_up.weight' uses the tensor type {ggml_type.name}"
        with pytest.raises(UnsupportedTypeError, match=expected):
            dequantize(raw, ggml_type, (4, 256), tensor_name="blk.3.ffn_up.weight")


def test_unknown_type_number_is_a_clear_error():
    assert not quant.is_supported(999)
    with pytest.raises(UnsupportedTypeError, match="999"):
        quant.get_format(999)
    with pytest.raises(UnsupportedTypeError, match="999"):
        nd.get_kernel(999)


def test_size_mismatch_names_tensor_type_and_sizes():
    raw = random_blocks(T.Q4_K, 3)
    for dequantize in (quant.dequantize, nd.dequantize):
        with pytest.raises(GGUFError, match=r"'tok_embd' \(Q4_K, shape \(2, 512\)\) needs 576 bytes but 432"):
            dequantize(raw, T.Q4_K, (2, 512), tensor_name="tok_embd")
        with pytest.raises(GGUFError, match=r"rows of 300 values, not a multiple of the Q4_K block size 256"):
            dequantize(raw, T.Q4_K, (1, 300))


def test_quantizing_to_an_unsupported_type_is_a_clear_error():
    with pytest.raises(UnsupportedTypeError, match="NVFP4, which edgeinfer cannot decode"):
        quant.quantize(np.zeros(256, np.float32), T.NVFP4)
    with pytest.raises(ValueError, match="not 48"):
        quant.quantize(np.zeros((2, 48), np.float32), T.Q8_0)


# -- dequantization: numpy reference == gguf-py, Numba == numpy reference -------------------------------


@pytest.mark.parametrize("ggml_type", GGUF_PY_DEQUANT, ids=type_id)
def test_reference_matches_gguf_py(ggml_type):
    fmt = quant.get_format(ggml_type)
    n_blocks = n_test_blocks(ggml_type)
    raw = random_blocks(ggml_type, n_blocks)
    shape = (8, n_blocks // 8 * fmt.block_size)
    ours = quant.dequantize(raw, ggml_type, shape)
    if fmt.block_size > 1:  # (random F16 / BF16 bits include inf and NaN on purpose)
        assert np.isfinite(ours).all()
    assert_same_bits(ours, gguf_py_dequantize(raw.reshape(8, -1), ggml_type))


def test_q8_k_reference():
    raw = random_blocks(T.Q8_K, 64)
    b = raw.view(quant.get_format(T.Q8_K).block_dtype)
    expected = np.stack([np.float32(d) * q.astype(np.float32) for d, q in zip(b["d"], b["qs"])])
    assert_same_bits(quant.dequantize(raw, T.Q8_K, (64, 256)), expected)


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=type_id)
def test_numba_matches_reference(ggml_type):
    fmt = quant.get_format(ggml_type)
    n_blocks = n_test_blocks(ggml_type)
    raw = random_blocks(ggml_type, n_blocks, seed=1)
    shape = (4, 2, n_blocks // 8 * fmt.block_size)
    expected = quant.dequantize(raw, ggml_type, shape)
    assert_same_bits(nd.dequantize(raw, ggml_type, shape), expected)

    rows = raw.reshape(8, -1)
    assert_same_bits(nd.dequantize_rows(rows, ggml_type, 3, 6), expected.reshape(8, -1)[3:6])

    # a kernel decodes exactly the blocks it is asked for, and no others
    out = np.full(n_blocks * fmt.block_size, np.nan, np.float32)
    raw.flags.writeable = False  # as the entry points pass it: one compiled kernel per type
    nd.get_kernel(ggml_type)(raw, out, 5, 7)
    decoded = slice(5 * fmt.block_size, 12 * fmt.block_size)
    assert_same_bits(out[decoded], expected.reshape(-1)[decoded])
    out[decoded] = np.nan
    assert np.isnan(out).all()


def test_numba_fp16_and_bf16_every_bit_pattern():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    assert_same_bits(nd.dequantize(every, T.F16, (1 << 16,)), every.view(np.float16).astype(np.float32))
    as_bf16 = (every.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    assert_same_bits(nd.dequantize(every, T.BF16, (1 << 16,)), as_bf16)
    assert_same_bits(quant.dequantize(every, T.BF16, (1 << 16,)), as_bf16)


def test_dequantize_rows_options():
    raw = random_blocks(T.Q6_K, 24, seed=2).reshape(2, 3, -1)  # a 3D tensor: 6 rows of 4 blocks
    expected = quant.dequantize(raw, T.Q6_K, (2, 3, 1024)).reshape(6, 1024)
    out = np.empty((2, 1024), np.float32)
    assert nd.dequantize_rows(raw, T.Q6_K, 4, None, out=out) is not None
    assert_same_bits(out, expected[4:])
    assert_same_bits(nd.dequantize_rows(raw, T.Q6_K), expected)
    with pytest.raises(ValueError, match="out must be"):
        nd.dequantize_rows(raw, T.Q6_K, 0, 2, out=out[:1])


# -- quantization ---------------------------------------------------------------------------------------


def quantize_test_data(block_size: int) -> np.ndarray:
    """Rows of 512 values: normal data at many magnitudes, plus the edge cases of the reference code."""
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal(512) * s for s in (1e-6, 1e-3, 0.02, 1.0, 30.0, 1e4)]
    rows.append(np.zeros(512))
    rows.append(np.full(512, 0.7))
    rows.append(np.full(512, -3.0))
    ties = rng.integers(-254, 255, 512) / 2.0  # many exact .5 multiples
    ties[::block_size] = 127.0  # q = x exactly for Q8_0 and Q8_K
    rows.append(ties)
    plus_minus = rng.standard_normal(512)
    plus_minus[::block_size], plus_minus[1::block_size] = 5.0, -5.0  # equal magnitudes: the first wins
    rows.append(plus_minus)
    sparse = np.where(rng.random(512) < 0.9, 0.0, rng.standard_normal(512))
    rows.append(sparse)
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("ggml_type", GGUF_PY_QUANT, ids=type_id)
def test_quantize_matches_gguf_py(ggml_type):
    x = quantize_test_data(quant.get_format(ggml_type).block_size)
    ours = quant.quantize(x, ggml_type)
    theirs = np.ascontiguousarray(gguf.quants.quantize(x, ggml_type)).view(np.uint8)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def nearest_int(fval: np.float32) -> int:
    """ggml's nearest_int, literally: add 1.5 * 2^23 in float32 and read the mantissa bits."""
    val = np.float32(fval) + np.float32(12582912.0)
    return int((np.array(val, np.float32).view(np.int32) & 0x007FFFFF) - 0x00400000)


def quantize_row_q8_k_ref(x: np.ndarray) -> list[tuple[np.float32, list[int], list[int]]]:
    """A line-by-line port of ggml's quantize_row_q8_K_ref, one block of 256 at a time."""
    blocks = []
    for block in x.reshape(-1, 256):
        amax, max_v = np.float32(0), np.float32(0)
        for v in block:
            if abs(v) > amax:
                amax, max_v = abs(v), v
        if not amax:
            blocks.append((np.float32(0), [0] * 256, [0] * 16))
            continue
        iscale = np.float32(-127.0) / max_v
        qs = [min(127, nearest_int(iscale * v)) for v in block]
        bsums = [sum(qs[16 * j : 16 * j + 16]) for j in range(16)]
        blocks.append((np.float32(1) / iscale, qs, bsums))
    return blocks


def test_q8_k_quantize_matches_ggml_reference():
    x = quantize_test_data(256)[[1, 3, 5, 6, 9, 10]]
    b = quant.quantize(x, T.Q8_K).reshape(-1).view(quant.get_format(T.Q8_K).block_dtype)
    expected = quantize_row_q8_k_ref(x)
    assert len(b) == len(expected)
    for block, (d, qs, bsums) in zip(b, expected):
        assert block["d"].view(np.uint32) == np.float32(d).view(np.uint32)
        assert block["qs"].tolist() == qs
        assert block["bsums"].tolist() == bsums


ROUND_TRIP_RMS = {  # relative RMS error of dequantize(quantize(x)) on normal data (measured, +20%)
    T.F32: 0.0, T.F16: 3e-4, T.BF16: 2.1e-3, T.Q4_0: 0.108, T.Q4_1: 0.099,
    T.Q5_0: 0.054, T.Q5_1: 0.047, T.Q8_0: 0.0066, T.Q8_K: 0.0089,
    T.Q2_K: 0.373, T.Q3_K: 0.19, T.Q4_K: 0.089, T.Q5_K: 0.045, T.Q6_K: 0.022, T.IQ4_NL: 0.095, T.IQ4_XS: 0.095,
}  # fmt: skip


@pytest.mark.parametrize("ggml_type", quant.QUANTIZABLE_TYPES, ids=type_id)
def test_quantize_round_trip(ggml_type):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 1024)) * rng.uniform(0.01, 10, (16, 1))).astype(np.float32)
    raw = quant.quantize(x, ggml_type)
    assert raw.shape == (16, quant.row_bytes(ggml_type, 1024))
    for dequantize in (quant.dequantize, nd.dequantize):
        y = dequantize(raw, ggml_type, x.shape)
        rms = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.mean(x**2, axis=1))
        assert rms.max() <= ROUND_TRIP_RMS[ggml_type], rms.max()
    zeros = quant.quantize(np.zeros((2, 256), np.float32), ggml_type)
    assert not quant.dequantize(zeros, ggml_type, (2, 256)).any()


# -- real model files -----------------------------------------------------------------------------------


def sample_tensors(f: GGUFFile) -> dict[T, list]:
    """Per tensor type of the file: its first and its largest tensor."""
    by_type: dict[T, list] = {}
    for t in f.tensors.values():
        by_type.setdefault(t.ggml_type, []).append(t)
    return {ty: [ts[0], max(ts, key=lambda t: t.n_bytes)] for ty, ts in by_type.items()}


@pytest.mark.parametrize(
    "path_fixture, types",
    [
        ("smollm2_path", {T.Q4_1, T.Q8_0, T.F32}),
        ("gemma3_path", {T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0, T.F32}),
    ],
)
def test_real_tensors(path_fixture, types, request):
    f = GGUFFile(request.getfixturevalue(path_fixture))
    samples = sample_tensors(f)
    assert set(samples) == types
    for ggml_type, tensors in samples.items():
        for t in tensors:
            rows = t.data.reshape(-1, t.data.shape[-1])
            n_rows, n_cols = rows.shape[0], t.ne[0]
            for start in sorted({0, n_rows // 2, max(0, n_rows - 3)}):
                end = min(n_rows, start + 3)
                where = f"{t.name} ({ggml_type.name}) rows {start}:{end}"
                ref = quant.dequantize(rows[start:end], ggml_type, (end - start, n_cols), t.name)
                assert np.isfinite(ref).all(), where
                assert_same_bits(ref, gguf_py_dequantize(rows[start:end], ggml_type))
                assert_same_bits(nd.dequantize_rows(rows, ggml_type, start, end), ref)
    # one whole layer, every tensor, Numba against the reference
    for t in f.tensors.values():
        if t.name.startswith("blk.0."):
            expected = quant.dequantize(t.data, t.ggml_type, t.shape, t.name)
            assert_same_bits(nd.dequantize(t.data, t.ggml_type, t.shape, t.name), expected)
