"""gpt-oss (llama.cpp's `gpt-oss`, LLM_ARCH_OPENAI_MOE) on tiny random models with the real files' tensor
names, types and keys (tests/gptoss_models.py: MXFP4 experts), against llama.cpp's logits on the same
files (tests/fixtures/logits_gptoss.npz, made by tests/fixtures/make_gptoss_fixture.py), on every CPU
backend; and its pieces against their numpy twins: attention sinks (numpy, Numba, native C on each ISA),
OpenAI's clamped SwiGLU, the softmax over the chosen experts' logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gptoss_models import GPTOSS_MODELS, N_CTX, write_all
from model_writer import assert_as_llamacpp_ran
from reference_model import agreement

from edgeinfer.arch import build_model, load_config
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import numpy_ops
from edgeinfer.kernels.reference import ReferenceBackend

FIXTURE = Path(__file__).parent / "fixtures" / "logits_gptoss.npz"


def _native_available() -> bool:
    from edgeinfer.kernels.native import available

    return available()


BACKENDS = ["reference", "numba", pytest.param("native", marks=pytest.mark.skipif(
    not _native_available(), reason="edgeinfer._native is not built"))]  # fmt: skip


def _backend(name):
    if name == "reference":
        return ReferenceBackend()
    from edgeinfer.kernels import get_backend

    return get_backend(name)


@pytest.fixture(scope="module")
def gptoss_files(tmp_path_factory):
    fixture = np.load(FIXTURE)
    paths = write_all(tmp_path_factory.mktemp("gptoss"))
    assert_as_llamacpp_ran(paths, fixture, "make_gptoss_fixture.py")
    return paths, fixture


def _model(path, backend="numba", kv_type="f16"):
    model = build_model(GGUFFile(str(path)), _backend(backend))
    model.set_kv_type(kv_type)
    return model


def _logits(model, ids, n_ctx=N_CTX):
    return model.forward(ids, KVCache.for_model(model, n_ctx))


def top5_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Mean |ours - llama.cpp| over llama.cpp's top 5 logits of every position."""
    top = np.argsort(-theirs, axis=-1, kind="stable")[:, :5]
    return float(np.abs(np.take_along_axis(ours, top, -1) - np.take_along_axis(theirs, top, -1)).mean())


def _own(fixture, name: str) -> float:
    """llama.cpp's own batched-vs-token-by-token mean top-5 difference on the model."""
    theirs = fixture[f"{name}.logits"].astype(np.float32)
    seq_at_top = fixture[f"{name}.seq_top_logits"][:, :5]
    return float(np.abs(seq_at_top - np.take_along_axis(theirs, fixture[f"{name}.seq_top_ids"][:, :5], -1)).mean())


def test_config_reads_the_family(gptoss_files):
    paths, _ = gptoss_files
    c = load_config(GGUFFile(str(paths["gptoss_q8_0"])))
    assert c.arch == "gpt-oss" and c.n_head * c.head_dim != c.n_embd  # key_length, not n_embd / n_head
    assert c.swa_layers == (True, False, True, False) and c.n_swa == 8  # even layers local
    assert c.rope_neox and c.rope_scaling == "yarn" and c.rope_freq_scale == 1 / 32 and c.rope_n_ctx_orig == 4096
    assert c.yarn_ext_factor == 1.0 and c.attn_scale == pytest.approx(1 / np.sqrt(c.n_rot))
    assert c.moe.gating == "softmax_weight" and not c.moe.norm_weights and c.moe.n_expert_used == 4
    assert not c.tied_output


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(GPTOSS_MODELS))
def test_matches_llama_cpp(name, backend, gptoss_files):
    """Teacher-forced logits at every position of a prompt 8-13x the sliding windows: argmax agreement
    >= 0.98 (near-ties within half a logit count), and the mean top-5 difference within twice llama.cpp's
    own batched-vs-token-by-token figure or 0.5% of the logit scale, whichever is larger (as
    tests/test_arch_new.py). Most of what remains is llama.cpp's: its attention rounds q and the softmax
    probabilities to f16 before the f16 K/V products, the same in both of its runs."""
    paths, fixture = gptoss_files
    ids = fixture["ids"]
    theirs = fixture[f"{name}.logits"].astype(np.float32)
    ours = _logits(_model(paths[name], backend), ids)
    top = np.argsort(-theirs, axis=-1, kind="stable")[:, :16]
    a = agreement(ours, {"top_ids": top, "top_logits": np.take_along_axis(theirs, top, -1)})
    assert a["argmax"] >= 0.98, a
    scale = float(np.abs(theirs).max())
    assert top5_diff(ours, theirs) <= max(2 * _own(fixture, name), 0.005 * scale, 0.02), (
        top5_diff(ours, theirs), _own(fixture, name), scale)


@pytest.mark.parametrize("what", ["sinks", "window"])
def test_sinks_and_window_matter(what, gptoss_files):
    """Without the sinks, or without the sliding window, the logits move ten times further from
    llama.cpp's than ours are: the fixture checks both."""
    paths, fixture = gptoss_files
    name = "gptoss_q8_0"
    ids, theirs = fixture["ids"], fixture[f"{name}.logits"].astype(np.float32)
    model = _model(paths[name], "numba")
    ours = _logits(model, ids)
    for block in model.blocks:
        if what == "sinks":
            block.attn.sinks = None
        else:
            block.attn.n_swa = 0
    changed = _logits(model, ids)
    assert top5_diff(changed, theirs) > 10 * top5_diff(ours, theirs)


def test_token_by_token_equals_batch(gptoss_files):
    paths, fixture = gptoss_files
    ids = fixture["ids"]
    model = _model(paths["gptoss_q8_0"], "reference", kv_type="f32")
    full = _logits(model, ids)
    cache = KVCache.for_model(model, N_CTX)
    rows = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.abs(full - rows).max() <= 1e-4 * max(1.0, np.abs(full).max())


@pytest.mark.parametrize("backend", ["numba", pytest.param("native", marks=pytest.mark.skipif(
    not _native_available(), reason="edgeinfer._native is not built"))])  # fmt: skip
def test_batch_gives_each_sequence_its_own_bits(backend, gptoss_files):
    """Two sequences in one pass (continuous batching: attention with sinks over each one's cache, the
    experts run once over both's tokens) give each the bits it gets alone."""
    paths, fixture = gptoss_files
    ids = fixture["ids"]
    model = _model(paths["gptoss_f16"], backend)
    a, b = ids[:40], ids[9:60]
    alone = [_logits(model, a), _logits(model, b)]
    both = model.forward_many([a, b], [KVCache.for_model(model, N_CTX), KVCache.for_model(model, N_CTX)], True)
    assert all(np.array_equal(x, y) for x, y in zip(alone, both))


# -- the pieces against their numpy twins -------------------------------------------------------------


def _attention_case(seed, n, n_kv, n_head, n_head_kv, d, kv_type="f32"):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n, n_head, d)) * 2).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    if kv_type == "f16":
        k, v = k.astype(np.float16), v.astype(np.float16)
    sinks = rng.normal(1.0, 2.0, n_head).astype(np.float32)
    sinks[0] = 40.0  # a sink that outweighs every cell: head 0's output is near 0
    kv_pos = np.arange(n_kv, dtype=np.int32)
    return q, k, v, kv_pos[n_kv - n :].copy(), kv_pos, sinks


def test_numpy_sinks_are_an_extra_logit():
    """numpy_ops.attention with sinks equals a softmax over [scores, sink] with the sink's weight
    dropped, computed here head by head in float64."""
    q, k, v, q_pos, kv_pos, sinks = _attention_case(1, 6, 20, 4, 2, 16)
    got = numpy_ops.attention(q, k, v, q_pos, kv_pos, 5, 0.25, sinks=sinks).reshape(6, 4, 16)
    mask = numpy_ops.causal_mask(q_pos, kv_pos, 5)
    for h in range(4):
        s = q[:, h].astype(np.float64) @ k[:, h // 2].T.astype(np.float64) * 0.25
        s = np.concatenate([np.where(mask, s, -np.inf), np.full((6, 1), sinks[h], np.float64)], axis=1)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert np.allclose(got[:, h], p[:, :-1] @ v[:, h // 2], atol=1e-6)
    assert np.abs(got[:, 0]).max() < 1e-9  # the overwhelming sink
    assert np.abs(got - numpy_ops.attention(q, k, v, q_pos, kv_pos, 5, 0.25).reshape(6, 4, 16)).max() > 0.1


SINK_SHAPES = [  # n, n_kv, n_head, n_head_kv, head_dim, n_swa
    (1, 1, 4, 1, 16, 0),
    (1, 37, 9, 3, 64, 0),
    (5, 12, 6, 2, 8, 4),
    (33, 70, 4, 4, 32, 9),
    (3, 29, 4, 2, 13, 0),  # tails: D not a multiple of 8
    (2, 300, 8, 2, 64, 128),
]


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,n_swa", SINK_SHAPES)
def test_numba_attention_with_sinks(n, n_kv, n_head, n_head_kv, head_dim, n_swa, kv_type):
    from edgeinfer.kernels.numba import ops as nops

    q, k, v, q_pos, kv_pos, sinks = _attention_case(n * 7 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, kv_type)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2, sinks=sinks)
    got = nops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2, sinks=sinks)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)
    # without sinks the kernel gives exactly what it gave before sinks existed (e^-inf adds 0)
    plain = nops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2)
    assert np.allclose(plain, numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2), atol=2e-6, rtol=1e-5)
    assert np.array_equal(plain, nops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2,
                                                sinks=np.full(n_head, -np.inf, np.float32)))  # fmt: skip


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,n_swa", SINK_SHAPES)
def test_native_attention_with_sinks(native_isa, n, n_kv, n_head, n_head_kv, head_dim, n_swa, kv_type):
    """The C kernel (AVX2 and portable) with sinks against the numpy twin; a token's bits do not depend
    on the batch or the thread count; no sinks (None) is the plain kernel."""
    q, k, v, q_pos, kv_pos, sinks = _attention_case(n * 7 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, kv_type)
    cells = np.arange(n_kv, dtype=np.int32)

    def run(qq, qp, threads=2, s=sinks):
        out = np.empty((qq.shape[0], n_head * head_dim), np.float32)
        native_isa.attention(qq, k, v, qp, kv_pos, cells, n_swa, 0.2, out, threads, s)
        return out

    got = run(q, q_pos)
    assert np.allclose(got, numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2, sinks=sinks), atol=2e-6, rtol=1e-5)
    assert np.array_equal(got, run(q, q_pos, threads=1))
    assert np.array_equal(got[-1:], run(q[-1:], q_pos[-1:]))
    plain = np.empty_like(got)
    native_isa.attention(q, k, v, q_pos, kv_pos, cells, n_swa, 0.2, plain, 2)
    assert np.array_equal(plain, run(q, q_pos, s=None))


def test_native_attention_many_with_sinks(native_isa):
    """Several sequences in one C job with one layer's sinks: each gets its bits alone; the backend's
    attention_sinks runs it; bad sinks are refused."""
    from edgeinfer.kernels import native

    cases = [_attention_case(i, n, n_kv, 8, 2, 64) for i, (n, n_kv) in enumerate([(1, 37), (5, 12), (1, 300), (20, 20)])]
    sinks = cases[0][5]
    items = [(q, k, v, qp, kp, None) for q, k, v, qp, kp, _ in cases]
    got = native.NativeBackend(n_threads=2).attention_sinks(items, 0, 0.125, sinks)
    for (q, k, v, qp, kp, _), out in zip(cases, got):
        alone = np.empty_like(out)
        native_isa.attention(q, k, v, qp, kp, np.arange(len(kp), dtype=np.int32), 0, 0.125, alone, 2, sinks)
        assert np.array_equal(out, alone)
    q, k, v, qp, kp, _ = cases[0]
    out = np.empty((1, 8 * 64), np.float32)
    for bad in (sinks[:4], sinks.astype(np.float64)):
        with pytest.raises(ValueError):
            native_isa.attention(q, k, v, qp, kp, np.arange(37, dtype=np.int32), 0, 0.125, out, 2, bad)


def test_swiglu_oai():
    """OpenAI's clamped SwiGLU (ggml_swiglu_oai): the numpy twin against the formula, the Numba kernel
    against the twin, the clamp on both sides."""
    from edgeinfer.kernels.numba import ops as nops

    rng = np.random.default_rng(3)
    gu = (rng.standard_normal((5, 2 * 300)) * 6).astype(np.float32)
    gu[0, :4] = [-200, -90, 8, 200]
    g, u = gu[:, :300].astype(np.float64), gu[:, 300:].astype(np.float64)
    x, y = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)
    want = x / (1 + np.exp(-1.702 * x)) * (y + 1)
    assert np.allclose(numpy_ops.glu(gu, "swiglu_oai"), want, rtol=1e-6, atol=1e-6)
    assert (np.abs(gu) > 7).mean() > 0.2  # the clamp is exercised
    got = nops.glu(gu, "swiglu_oai")
    assert np.isfinite(got).all() and np.allclose(got, want, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_softmax_weight_routing(backend):
    """The experts of the largest logits, weighted by the softmax of those logits alone (llama.cpp's
    LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT)."""
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((9, 32)) * 3).astype(np.float32)
    chosen, weights = _backend(backend).moe_route(logits, 4, "softmax_weight", False, 1.0)
    want = np.argsort(-logits, axis=1, kind="stable")[:, :4]
    assert np.array_equal(chosen, want)
    top = np.take_along_axis(logits, want, 1).astype(np.float64)
    w = np.exp(top - top.max(1, keepdims=True))
    assert np.allclose(weights, w / w.sum(1, keepdims=True), rtol=1e-6)
