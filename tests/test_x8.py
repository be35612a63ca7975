"""Weights repacked at load (the native backend's x8 layout, native/x8.h): the repack is lossless, every
x8 kernel on every instruction set this machine runs gives the same bits as the scalar x8 kernel, its
values are ggml's (the emulation and the float64 product), a token's output does not depend on its batch,
the thread count or the ISA, and a whole model gives the same logits repacked as in the file's layout."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_matmul import assert_close_to_float, assert_matches_emulation, random_weight, random_x

from edgeinfer.kernels import native
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import NumbaBackend

pytestmark = pytest.mark.skipif(not native.available(), reason="edgeinfer._native is not built")

X8_TYPES = list(native.X8_TYPES)


def _isas() -> list[str]:
    """Every kernel set this CPU can run (on a Zen 4: avx512vnni, avx2 and scalar; the sets it cannot run
    are checked through emulation, test_isa_emulated.py)."""
    if not native.available():
        return ["scalar"]
    return list(native.isas())


@pytest.fixture(params=_isas())
def isa(request):
    from edgeinfer import _native

    before = _native.set_isa(request.param)
    try:
        yield request.param
    finally:
        _native.set_isa(before)


def _cols(t: T) -> int:
    return 768 if t in (T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL) else 1024


def _packed(w: QTensor) -> QTensor:
    return native.repack_x8(w)


@pytest.mark.parametrize("n_rows", [1, 7, 8, 37, 64])
@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_repack_round_trip(ggml_type, n_rows):
    """Packing then unpacking gives the file's bytes back; a group block holds the same bytes as the
    eight rows' blocks (nothing added, nothing lost), and a partial group is padded with its last row."""
    w = random_weight(ggml_type, n_rows, _cols(ggml_type), seed=n_rows)
    p = _packed(w)
    assert p.layout == "x8" and p.raw.shape == ((n_rows + 7) // 8 * 8, w.raw.shape[1])
    assert np.array_equal(native.unpack_x8(p).raw, w.raw)
    assert p.raw.nbytes == (n_rows + 7) // 8 * 8 * w.raw.shape[1]
    g0 = p.raw[:8].reshape(-1)
    rows = w.raw[np.minimum(np.arange(8), n_rows - 1)]
    assert np.array_equal(np.sort(g0), np.sort(rows.reshape(-1)))


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 4, 5, 9, 17])
@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_matches_emulation(isa, ggml_type, n_tokens):
    """Each ISA's x8 kernel computes ggml's result (the numpy emulation, and dequantize(W) @ x)."""
    w = random_weight(ggml_type, 37, _cols(ggml_type), seed=n_tokens)
    x = random_x(n_tokens, w.n_cols, seed=n_tokens + 1)
    y = native.NativeBackend(2).matmul(_packed(w), x)
    assert_matches_emulation(w, x, y)
    assert_close_to_float(w, x, y)


@pytest.mark.parametrize("n_tokens", [1, 3, 6])
@pytest.mark.parametrize("ggml_type", [t for t in X8_TYPES if t in native.NATIVE_TYPES], ids=lambda t: t.name)
def test_plain_and_repacked_layouts_give_the_same_bits(isa, ggml_type, n_tokens):
    """A weight in the file's layout (not prepared) and its repacked copy give the same bits: the file's
    layout is repacked eight rows at a time as the product runs, by the same kernel."""
    w = random_weight(ggml_type, 29, _cols(ggml_type), seed=n_tokens + 20)
    x = random_x(n_tokens, w.n_cols, seed=n_tokens + 21)
    for threads in (1, 2):
        b = native.NativeBackend(threads)
        assert np.array_equal(b.matmul(w, x), b.matmul(_packed(w), x)), threads


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_same_bits_on_every_isa(ggml_type):
    """The float operations per (row, token) are fixed by the layout, not by the ISA: the SIMD kernels
    and the scalar reference agree bit for bit (the integer parts exactly, the floats in the same order)."""
    from edgeinfer import _native

    w = _packed(random_weight(ggml_type, 45, _cols(ggml_type), seed=5))
    x = random_x(11, w.n_cols, seed=6)
    results = {}
    before = _native.set_isa("auto")
    try:
        for name in _isas():
            _native.set_isa(name)
            results[name] = native.NativeBackend(2).matmul(w, x)
    finally:
        _native.set_isa(before)
    first = next(iter(results.values()))
    for name, y in results.items():
        assert np.array_equal(y, first), name


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_batch_and_thread_invariance(isa, ggml_type):
    """A token's outputs are the same bits alone (a decode), in a tile of 4, in a tail of 1-3, in token
    blocks of a long prefill, and on 1, 2 or 3 threads."""
    w = _packed(random_weight(ggml_type, 67, _cols(ggml_type), seed=7))
    x = random_x(70, w.n_cols, seed=8)
    alone = np.concatenate([native.NativeBackend(2).matmul(w, x[i : i + 1]) for i in range(len(x))])
    for threads in (1, 2, 3):
        b = native.NativeBackend(threads)
        assert np.array_equal(b.matmul(w, x), alone), threads
        assert np.array_equal(b.matmul(w, x[3:8]), alone[3:8]), threads


def test_x8_prefetch_distance_does_not_change_results():
    from edgeinfer import _native

    w = _packed(random_weight(T.Q4_K, 40, 1024, seed=9))
    x = random_x(2, w.n_cols)
    expected = native.NativeBackend(1).matmul(w, x)
    before = _native.set_prefetch(0)
    try:
        for distance in (0, 64, 4096):
            _native.set_prefetch(distance)
            for t in range(2):
                assert np.array_equal(native.NativeBackend(2).matmul(w, x[t : t + 1])[0], expected[t])
    finally:
        _native.set_prefetch(before)


def test_prepare_repacks_only_what_it_can_run():
    b = native.NativeBackend(2)
    q4 = random_weight(T.Q4_0, 16, 256)
    q41 = random_weight(T.Q4_1, 16, 256)
    assert b.prepare(q4).layout == "x8"
    assert b.prepare(q41) is q41  # no x8 kernel: the file's layout
    assert NumbaBackend(1).prepare(q4).layout == "x8"  # the same layout, in Numba (test_numba_x8.py)


def test_repacked_weight_lookups_and_other_backends():
    """get_rows and dequantize of a repacked weight give the file's values; a backend that cannot read
    the layout says so instead of computing garbage."""
    w = random_weight(T.Q6_K, 13, 512, seed=2)
    p = _packed(w)
    b = native.NativeBackend(1)
    assert np.array_equal(b.dequantize(p), b.dequantize(w))
    ids = np.array([0, 12, 5])
    assert np.array_equal(b.get_rows(p, ids), b.get_rows(w, ids))
    x = random_x(1, 512)  # the Numba backend runs the same layout, with the same bits
    assert np.array_equal(NumbaBackend(1).matmul(p, x), b.matmul(p, x))


def test_repack_can_be_turned_off():
    env = dict(os.environ, EDGEINFER_REPACK="0")
    code = (
        "from edgeinfer.kernels import native; from test_matmul import random_weight; "
        "from gguf.constants import GGMLQuantizationType as T; "
        "w = random_weight(T.Q4_0, 8, 256); print(native.NativeBackend(1).prepare(w) is w)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                          text=True, cwd=os.path.dirname(__file__), timeout=120)  # fmt: skip


@pytest.mark.parametrize("name", _isas())
def test_isa_override_picks_every_available_path(name):
    """EDGEINFER_ISA chooses any kernel set this CPU can run, for the whole process."""
    done = _run("from edgeinfer.kernels import native; print(native.native_isa())", EDGEINFER_ISA=name)
    assert done.returncode == 0 and done.stdout.strip() == name, done.stderr[-2000:]


def test_isa_override_that_cannot_run_is_a_clear_error():
    code = (
        "from edgeinfer.kernels import native\n"
        "try:\n    native.NativeBackend(1)\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    done = _run(code, EDGEINFER_ISA="no-such-isa")
    assert done.returncode == 0 and done.stdout.startswith("EdgeInferError EDGEINFER_ISA=no-such-isa"), done
    assert "scalar" in done.stdout


def test_info_system_says_which_path_runs():
    import json

    done = subprocess.run([sys.executable, "-m", "edgeinfer", "info", "--system", "--json"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    report = json.loads(done.stdout)
    assert report["isa"] == native.native_isa() and report["isa"] in report["isas"]
    assert report["isas"][-1] == "scalar" and report["repack"] is True
    assert report["isa_path"] == native.ISA_PATHS[report["isa"]]
    text = subprocess.run([sys.executable, "-m", "edgeinfer", "info", "--system"], capture_output=True, text=True,
                          timeout=120).stdout  # fmt: skip
    assert f"native ISA   {report['isa']} " in text and report["isa_path"] in text


def test_auto_chooses_the_best_set_the_cpu_features_allow():
    """The sets offered, best first, follow the CPU's features: AVX-512 VNNI, AVX-VNNI, AVX2 on x86;
    NEON with smmla (i8mm), NEON with sdot, NEON on ARM; scalar always; `auto` takes the first."""
    from edgeinfer import _native

    f = _native.cpu_features()
    avx2 = f.get("avx2") and f.get("fma") and f.get("f16c")
    want = [
        name
        for name, on in (
            ("avx512vnni", avx2 and all(f.get(k) for k in ("avx512f", "avx512bw", "avx512vl", "avx512vnni"))),
            ("avxvnni", avx2 and f.get("avxvnni")),
            ("avx2", avx2),
            ("neon_i8mm", f.get("neon") and f.get("dotprod") and f.get("i8mm")),
            ("neon_dotprod", f.get("neon") and f.get("dotprod")),
            ("neon", f.get("neon")),
            ("scalar", True),
        )
        if on
    ]
    assert _native.isas() == want
    before = _native.set_isa("auto")
    try:
        assert _native.isa() == want[0]
    finally:
        _native.set_isa(before)
