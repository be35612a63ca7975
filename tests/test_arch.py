"""The forward pass: tiny random models of every architecture against the float64 reference
(tests/reference_model.py), the KV cache, errors, and the real models against llama.cpp's logits
(tests/fixtures/logits_*.npz, made by tests/fixtures/make_logits_fixture.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from model_writer import assert_as_llamacpp_ran
from reference_model import ARCHS, LLAMACPP_TINY, ReferenceModel, agreement, write_llamacpp_tiny, write_tiny_model

from edgeinfer.arch import ARCHITECTURES, build_model, load_config
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.errors import ContextFullError, EdgeInferError, GGUFError, UnsupportedArchitectureError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels.reference import ReferenceBackend

FIXTURES = Path(__file__).parent / "fixtures"
K_SHAPE = dict(n_embd=256, n_ff=512)  # k-quant rows hold multiples of 256 values


def _numba_backend():
    from edgeinfer.kernels import get_backend

    return get_backend("numba")


@pytest.fixture(params=["reference", "numba"])
def backend(request):
    return ReferenceBackend() if request.param == "reference" else _numba_backend()


def _tolerance(backend) -> float:
    """Max |ours - float64| relative to the logits' scale: float32 arithmetic for the reference backend;
    8-bit activations (as llama.cpp) for the fast ones."""
    return 1e-4 if backend.name == "reference" else 0.06


def _tiny(tmp_path, arch, wtype=T.F32, **kw) -> Path:
    if wtype in (T.Q4_K, T.Q6_K):
        kw = {**K_SHAPE, **kw}
    if arch == "gemma3":  # 6 layers: five sliding-window layers and a global one
        kw = {"n_layer": 6, "n_swa": 5, "head_dim": 64 if "n_embd" in kw else 32, **kw}
    name = f"{arch}_{wtype.name}_{len(list(tmp_path.iterdir()))}.gguf"
    return write_tiny_model(tmp_path / name, arch, wtype, **kw)


def _model(path, backend=None, kv_type="f32"):
    """The model of a file; its caches in float32 unless told (tests of the arithmetic against the float64
    reference; llama.cpp's comparisons use f16, as llama.cpp itself, and q8_0)."""
    model = build_model(GGUFFile(path), backend or ReferenceBackend())
    model.set_kv_type(kv_type)
    return model


def _tokens(n, seed=0, n_vocab=256):
    return np.random.default_rng(seed).integers(0, n_vocab, n).astype(np.int32)


def _assert_close(ours, ref, rel):
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel * scale:.3g} (logit scale {scale:.3g})"


# -- tiny models against the float64 reference ----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("wtype", [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_matches_float64_reference(tmp_path, arch, wtype, backend):
    path = _tiny(tmp_path, arch, wtype, tied=wtype != T.Q8_0)
    tokens = _tokens(14, seed=1)
    model = _model(path, backend)
    logits = model.forward(tokens, KVCache.for_model(model, 32))
    assert logits.shape == (14, 256) and logits.dtype == np.float32
    _assert_close(logits, ReferenceModel(path).logits(tokens), _tolerance(backend))


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_output(tmp_path, tied):
    path = _tiny(tmp_path, "llama", T.Q8_0, tied=tied)
    model = _model(path)
    assert model.config.tied_output is tied
    assert model.output.weight.name == ("token_embd.weight" if tied else "output.weight")
    tokens = _tokens(9, seed=2)
    _assert_close(model.forward(tokens, KVCache.for_model(model, 16)), ReferenceModel(path).logits(tokens), 1e-4)


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_scaling={"type": "linear", "factor": 4.0}),
        dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_context_length": 64}),
        dict(rope_freqs=True, rope_freq_base=500000.0),  # Llama 3's per-pair frequency factors
    ],
    ids=["linear", "yarn", "rope_freqs"],
)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_rope_variants(tmp_path, arch, rope):
    path = _tiny(tmp_path, arch, T.F32, **rope)
    tokens = _tokens(12, seed=3)
    positions = np.arange(40, 52, dtype=np.int32)  # far enough for the scaling to matter
    model = _model(path)
    logits = model.forward(tokens, KVCache.for_model(model, 16), positions=positions)
    _assert_close(logits, ReferenceModel(path).logits(tokens, positions), 1e-4)


def test_gemma3_sliding_window_matters(tmp_path):
    """The tiny gemma3 (window 5, 14 tokens) differs from the same weights with no window, and the
    reference agrees with the windowed one."""
    tokens = _tokens(14, seed=4)
    windowed = _tiny(tmp_path, "gemma3", T.F32, n_swa=5, seed=7)
    unwindowed = _tiny(tmp_path, "gemma3", T.F32, n_swa=0, seed=7)
    m_w, m_u = _model(windowed), _model(unwindowed)
    assert [m_w.config.is_swa(il) for il in range(6)] == [True] * 5 + [False]
    a = m_w.forward(tokens, KVCache.for_model(m_w, 16))
    b = m_u.forward(tokens, KVCache.for_model(m_u, 16))
    assert np.abs(a[:5] - b[:5]).max() < 1e-4  # inside the window nothing changes but the rope base
    assert np.abs(a[6:] - b[6:]).max() > 1e-2
    _assert_close(a, ReferenceModel(windowed).logits(tokens), 1e-4)
    _assert_close(b, ReferenceModel(unwindowed).logits(tokens), 1e-4)


@pytest.fixture(scope="module")
def llamacpp_tiny(tmp_path_factory):
    """The tiny models llama.cpp ran for tests/fixtures/logits_tiny.npz, rewritten from their seeds."""
    fixture = np.load(FIXTURES / "logits_tiny.npz")
    paths = write_llamacpp_tiny(tmp_path_factory.mktemp("llamacpp_tiny"))
    assert_as_llamacpp_ran(paths, fixture, "make_logits_fixture.py")
    return paths, fixture


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("name", list(LLAMACPP_TINY))
def test_tiny_models_match_llama_cpp(name, llamacpp_tiny, backend, kv):
    """llama.cpp itself on tiny random models: qwen2 biases, qwen3 QK-norm, YaRN, linear scaling,
    rope_freqs, gemma3's window -- what the two real files cannot show. llama.cpp quantizes activations
    to 8 bits and keeps K/V in f16, hence a few percent of the logit scale; ours in f16 (the default)
    and in q8_0 (where the heads hold blocks of 32) stay within the same bounds."""
    paths, fixture = llamacpp_tiny
    ids, theirs = fixture["ids"], fixture[f"{name}.logits"].astype(np.float32)  # (n, n_vocab)
    if kv == "q8_0" and load_config(GGUFFile(paths[name])).head_dim % 32:
        pytest.skip("q8_0 needs heads of a multiple of 32 values")
    model = _model(paths[name], backend, kv)
    ours = model.forward(ids, KVCache.for_model(model, 32))
    scale = float(np.abs(theirs).max())
    assert np.abs(ours - theirs).max() <= 0.06 * scale
    assert np.abs(ours - theirs).mean() <= 0.01 * scale
    rows = np.arange(len(ids))
    ours_best, their_best = ours.argmax(-1), theirs.argmax(-1)
    agree = (
        (ours_best == their_best)
        | (theirs[rows, ours_best] >= theirs.max(-1) - 0.5)
        | (ours[rows, their_best] >= ours.max(-1) - 0.5)
    )
    assert agree.all(), f"argmax differs at positions {np.flatnonzero(~agree).tolist()}"


# -- the KV cache ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_token_by_token_equals_full_prompt(tmp_path, arch, backend):
    path = _tiny(tmp_path, arch, T.Q8_0)
    model = _model(path, backend)
    tokens = _tokens(13, seed=5)
    full = model.forward(tokens, KVCache.for_model(model, 16))
    cache = KVCache.for_model(model, 16)
    steps = [model.forward(tokens[i : i + 1], cache) for i in range(len(tokens))]
    assert cache.n_past == 13
    _assert_close(np.concatenate(steps), full, 1e-5 if backend.name == "reference" else 0.02)
    chunked = KVCache.for_model(model, 16)  # uneven chunks, as a scheduler would cut a prompt
    parts = [model.forward(tokens[a:b], chunked) for a, b in ((0, 5), (5, 6), (6, 13))]
    _assert_close(np.concatenate(parts), full, 1e-5 if backend.name == "reference" else 0.02)


def test_last_logits_only(tmp_path):
    model = _model(_tiny(tmp_path, "qwen2", T.Q4_0))
    tokens = _tokens(7, seed=6)
    full = model.forward(tokens, KVCache.for_model(model, 8))
    last = model.forward(tokens, KVCache.for_model(model, 8), all_logits=False)
    assert last.shape == (1, 256)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-6, atol=1e-5)  # BLAS sums 1 row and 7 alike, nearly


def test_context_full_raises_and_leaves_cache_usable(tmp_path):
    path = _tiny(tmp_path, "llama", T.Q8_0)
    model = _model(path)
    tokens = _tokens(8, seed=8)
    cache = KVCache.for_model(model, 8)
    model.forward(tokens[:6], cache)
    with pytest.raises(ContextFullError, match=r"holds 8 tokens.*n_ctx.*new conversation"):
        model.forward(tokens[6:8].repeat(2), cache)  # 6 + 4 > 8
    assert cache.n_past == 6
    last = model.forward(tokens[6:8], cache)  # exactly fills the context
    assert cache.n_past == 8 and cache.n_free == 0
    _assert_close(last, ReferenceModel(path).logits(tokens)[6:8], 1e-4)
    with pytest.raises(ContextFullError):
        model.forward(tokens[:1], cache)
    assert issubclass(ContextFullError, EdgeInferError)


def test_truncate_rolls_back(tmp_path):
    model = _model(_tiny(tmp_path, "gemma3", T.Q8_0))
    tokens = _tokens(10, seed=9)
    cache = KVCache.for_model(model, 16)
    first = model.forward(tokens, cache)
    cache.truncate(6)
    assert cache.n_past == 6
    model.forward(_tokens(3, seed=10), cache)  # a rejected draft overwrites cells 6..8
    cache.truncate(6)
    again = model.forward(tokens[6:], cache)
    _assert_close(again, first[6:], 1e-5)
    with pytest.raises(ValueError):
        cache.truncate(11)


@pytest.mark.parametrize("kv,rel", [("f16", 5e-3), ("q8_0", 2e-2)])
def test_rounded_cache_formats(tmp_path, kv, rel):
    """f16 and q8_0 caches: the model's default (f16 unless told) or one asked for, near float32's."""
    model = _model(_tiny(tmp_path, "qwen3", T.F16, head_dim=32))
    tokens = _tokens(9, seed=11)
    ref = model.forward(tokens, KVCache.for_model(model, 16))
    cache = KVCache.for_model(model, 16, kv_type=kv)
    assert cache.kv_type.name == kv and cache.pool.k.dtype == (np.float16 if kv == "f16" else np.uint8)
    _assert_close(model.forward(tokens, cache), ref, rel)
    assert build_model(GGUFFile(_tiny(tmp_path, "llama")), ReferenceBackend()).kv_dims()["kv_type"] == "f16"
    with pytest.raises(EdgeInferError, match="blocks of 32"):
        _model(_tiny(tmp_path, "llama"), kv_type="q8_0")  # heads of 16


# -- errors and the registry ----------------------------------------------------------------------------


def test_bad_tokens(tmp_path):
    model = _model(_tiny(tmp_path, "llama"))
    cache = KVCache.for_model(model, 8)
    with pytest.raises(EdgeInferError, match="0..255"):
        model.forward(np.array([1, 256], np.int32), cache)
    with pytest.raises(EdgeInferError, match="non-empty"):
        model.forward(np.array([], np.int32), cache)
    assert cache.n_past == 0


def test_unknown_architecture(tmp_path):
    path = write_tiny_model(tmp_path / "x.gguf", "llama")
    f = GGUFFile(path)
    f.metadata["general.architecture"] = "mamba9"
    with pytest.raises(UnsupportedArchitectureError, match="mamba9.*Supported: .*gemma3.*llama"):
        build_model(f)
    assert set(ARCHS) <= set(ARCHITECTURES)


def test_missing_tensor_is_named(tmp_path):
    f = GGUFFile(_tiny(tmp_path, "qwen3"))
    del f.tensors["blk.1.attn_k_norm.weight"]
    with pytest.raises(GGUFError, match="blk.1.attn_k_norm.weight"):
        build_model(f)


def test_trace_names_intermediates(tmp_path):
    model = _model(_tiny(tmp_path, "llama", n_layer=2))
    seen = []
    model.trace = lambda name, il, x: seen.append((name, il, x.shape))
    model.forward(_tokens(3), KVCache.for_model(model, 4))
    names = {(n, il) for n, il, _ in seen}
    assert {("attn_norm", 0), ("Qcur", 1), ("kqv_out", 1), ("l_out", 1), ("result_output", -1)} <= names


# -- the real models ------------------------------------------------------------------------------------


def test_config_smollm2(smollm2_gguf):
    c = load_config(smollm2_gguf)
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff) == ("llama", 30, 576, 9, 3, 64, 1536)
    assert (c.n_vocab, c.rope_freq_base, c.rope_neox, c.tied_output) == (49152, 100000.0, False, True)
    assert c.attn_scale == pytest.approx(1 / 8)


def test_config_gemma3(gemma3_gguf):
    c = load_config(gemma3_gguf)
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff) == ("gemma3", 18, 640, 4, 1, 256, 2048)
    assert (c.n_vocab, c.n_swa, c.rope_neox, c.tied_output, c.final_logit_softcap) == (262144, 512, True, True, 0.0)
    assert (c.rope_freq_base, c.rope_freq_base_swa) == (1e6, 1e4)
    assert c.attn_scale == pytest.approx(1 / 16)
    assert [il for il in range(18) if not c.is_swa(il)] == [5, 11, 17]


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_matches_llama_cpp(name, request, backend, kv):
    """The real files against llama.cpp (K/V in f16, its default), with our K/V in f16 (the default)
    and in q8_0: the same bar for both."""
    if kv == "q8_0" and backend.name == "reference":
        pytest.skip("q8_0 runs on the compiled backend (the same values on every backend: tests/test_ops.py)")
    path = request.getfixturevalue(f"{name}_path")
    fixture = np.load(FIXTURES / f"logits_{name}.npz")
    own = json.loads((FIXTURES / "logits_llamacpp.json").read_text())["models"][name]
    model = build_model(GGUFFile(path), backend)
    model.set_kv_type(kv)
    ids = fixture["ids"]
    logits = model.forward(ids, KVCache.for_model(model, 512))  # teacher-forced: prompt + continuation
    a = agreement(logits, fixture)
    print(name, backend.name, kv, a, "llama.cpp batch vs sequential:", own["batch_vs_seq_top1_mean_abs"])
    assert a["argmax"] >= 0.98, a
    # llama.cpp's own batched and token-by-token runs differ by ~0.12 (SmolLM2) and ~0.23 (Gemma 3)
    assert a["top1_mean"] <= max(0.2, 1.5 * own["batch_vs_seq_top1_mean_abs"]), a
    assert a["top1_max"] <= 2.0, a
    assert math.isfinite(a["topk_mean"])


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_decode_with_cache(name, request):
    """Prefill, then decode token by token: the same logits as one batch, and as llama.cpp's."""
    path = request.getfixturevalue(f"{name}_path")
    fixture = np.load(FIXTURES / f"logits_{name}.npz")
    ids, n_steps = fixture["ids"], 6
    model = build_model(GGUFFile(path), ReferenceBackend())
    model.set_kv_type("f32")  # numpy's BLAS sums one row and many apart: f16 would round them a step apart
    batch = model.forward(ids, KVCache.for_model(model, 512))[-n_steps:]
    cache = KVCache.for_model(model, 512)
    model.forward(ids[:-n_steps], cache, all_logits=False)
    steps = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids) - n_steps, len(ids))])
    assert cache.n_past == len(ids)
    _assert_close(steps, batch, 1e-4)
    tail = {k: fixture[k][-n_steps:] for k in ("top_ids", "top_logits")}
    assert agreement(steps, tail)["top1_mean"] < 0.5


def test_cache_takes_blocks_as_the_sequence_grows(tmp_path):
    """A cache holds blocks for the tokens it has (not its whole context), and gives them back on a
    rollback; nothing changes in the results."""
    from edgeinfer.engine.kv_cache import BlockPool

    model = _model(_tiny(tmp_path, "llama", T.Q8_0))
    tokens = _tokens(13, seed=12)
    full = model.forward(tokens, KVCache.for_model(model, 13))
    pool = BlockPool.for_model(model, 64, block_size=4)
    cache = KVCache.for_model(model, 13, pool=pool)
    assert pool.n_used == 0
    steps = [model.forward(tokens[:3], cache)]
    assert pool.n_used == 1
    steps += [model.forward(tokens[i : i + 1], cache) for i in range(3, 13)]
    assert pool.n_used == 4 and cache.nbytes == 4 * pool.block_nbytes  # 13 tokens in blocks of 4
    _assert_close(np.concatenate(steps), full, 1e-5)
    cache.truncate(5)
    assert pool.n_used == 2
    _assert_close(model.forward(tokens[5:], cache), full[5:], 1e-5)


def test_stacked_weights_release_their_file_pages(smollm2_path):
    """Q/K/V and gate/up are stacked into copies at load; the file's pages of the originals are handed
    back (the model holds those bytes once), and reading them again still gives the same bytes."""
    f = GGUFFile(smollm2_path)
    model = build_model(f, ReferenceBackend())
    names = model.stacked_sources()
    assert len(names) == 30 * 5 and "blk.0.attn_q.weight" in names and "blk.29.ffn_up.weight" in names
    attn = model.blocks[0].attn
    assert attn.wqkv is not None and attn.wqkv.weight.raw.shape[0] == 576 + 192 + 192
    raw = f.tensors["blk.0.attn_q.weight"].data
    assert np.array_equal(attn.wqkv.weight.raw[:576], raw)  # re-read after release: the same bytes
    assert f.release_pages(["blk.0.ffn_gate.weight"]) > 0
