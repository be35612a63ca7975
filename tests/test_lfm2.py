"""LFM2 (edgeinfer/arch/lfm2.py; LFM2-MoE, lfm2moe.py): short-convolution and attention layers on tiny
random models with the family's real tensor names and keys (tests/lfm2_models.py), against llama.cpp's logits on the same files
(tests/fixtures/logits_lfm2.npz, made by tests/fixtures/make_lfm2_fixture.py); and the convolution's state
in the cache: token by token = one batch, rollback (truncate) and shared prefixes = a fresh run, several
sequences in one pass = each alone, greedy speculative decoding = plain decoding, the batched server
runner reusing a prefix = alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from lfm2_models import LFM2_MODELS, N_CTX, write_all
from model_writer import assert_as_llamacpp_ran
from reference_model import agreement
from test_arch_new import _fixture_top, top5_diff

from edgeinfer.api import load
from edgeinfer.arch import build_model
from edgeinfer.engine.batch import BatchRunner
from edgeinfer.engine.generate import GenerationStats, generate_stream
from edgeinfer.engine.kv_cache import BlockPool, KVCache
from edgeinfer.engine.runner import Finish, SerialRunner
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.engine.speculative import CostModel, SpecConfig, Speculator
from edgeinfer.errors import EdgeInferError
from edgeinfer.gguf import GGUFFile
from edgeinfer.info import model_info
from edgeinfer.kernels import native_available
from edgeinfer.kernels.reference import ReferenceBackend

FIXTURE = Path(__file__).parent / "fixtures" / "logits_lfm2.npz"
NAMES = list(LFM2_MODELS)
NATIVE = pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="no C extension"))
GREEDY = SamplingParams(temperature=0)


def _backend(name):
    if name == "reference":
        return ReferenceBackend()
    from edgeinfer.kernels import get_backend

    return get_backend(name)


@pytest.fixture(scope="module")
def lfm2_files(tmp_path_factory):
    fixture = np.load(FIXTURE)
    paths = write_all(tmp_path_factory.mktemp("lfm2"))
    assert_as_llamacpp_ran(paths, fixture, "make_lfm2_fixture.py")
    return paths, fixture


_MODELS: dict = {}


def _model(path, backend="numba", kv_type="f16"):
    key = (str(path), backend, kv_type)
    if key not in _MODELS:
        model = build_model(GGUFFile(path), _backend(backend))
        model.set_kv_type(kv_type)
        _MODELS[key] = model
    return _MODELS[key]


@pytest.mark.parametrize("backend", ["reference", "numba", NATIVE])
@pytest.mark.parametrize("name", NAMES)
def test_matches_llama_cpp(name, backend, lfm2_files):
    """Teacher-forced logits at every position: argmax agreement >= 0.98 (near-ties within half a logit
    count), the mean top-5 difference within llama.cpp's own noise: twice its batched-vs-token-by-token
    figure, or what rounding its activations for the matmuls moves its logits by (its run on the same
    weights in F32), or 0.005 of the logit scale, whichever is largest. The second matters for Q8_0: a
    convolution multiplies three projections (B, C, x), each rounded to int8 blocks in llama.cpp's run."""
    paths, fixture = lfm2_files
    ids = fixture["ids"]
    theirs = fixture[f"{name}.logits"].astype(np.float32)
    model = _model(paths[name], backend)
    ours = model.forward(ids, KVCache.for_model(model, N_CTX))
    a = agreement(ours, _fixture_top(theirs))
    assert a["argmax"] >= 0.98, a
    at_top = np.take_along_axis(theirs, fixture[f"{name}.seq_top_ids"][:, :5], -1)
    seq = float(np.abs(fixture[f"{name}.seq_top_logits"][:, :5] - at_top).mean())
    f32 = float(np.abs(fixture[f"{name}.f32_top_logits"][:, :5] - at_top).mean())
    scale = float(np.abs(theirs).max())
    bound = max(2 * seq, f32, 0.005 * scale, 0.02)
    assert top5_diff(ours, theirs) <= bound, (top5_diff(ours, theirs), seq, f32, scale)


def test_the_file_says_which_layers_attend(lfm2_files):
    paths, _ = lfm2_files
    model = _model(paths["lfm2_swa_f16"], "reference")
    c = model.config
    assert c.attn_layers == (False, True, False, False, True) and c.n_conv_taps == 4 and c.n_swa == 8
    assert model.kv_dims() == dict(n_layer=2, n_head_kv=2, head_dim=32, head_dim_v=32, kv_type="f16",
                                   n_conv_layer=3, conv_dim=128)  # fmt: skip
    pool = BlockPool.for_model(model, 64)
    assert pool.conv.shape == (3, 64, 128) and pool.k.shape == (2, 64, 2, 32)
    # a block's bytes: K and V of 2 layers (2 heads of 32, f16) and 3 convolution rows of 128 (f16)
    assert pool.block_nbytes == pool.block_size * (2 * 2 * 2 * 32 * 2 + 3 * 128 * 2)
    per_token = pool.block_nbytes // pool.block_size
    assert load(str(paths["lfm2_swa_f16"]), n_ctx=64, backend="numba", progress=False).kv_bytes_per_token() == per_token
    info = model_info(str(paths["lfm2_swa_f16"]))  # `edgeinfer info`, before any load
    assert info["runnable"] is True and info["kv_bytes_per_token"]["f16"] == per_token
    assert info["kv_bytes_per_token"]["f32"] == 2 * per_token


def test_lfm2moe_routes_from_the_leading_dense_layers_on(lfm2_files):
    """LFM2-MoE: dense feed-forwards in the first leading_dense_block_count layers, then experts with
    sigmoid routing and a selection bias, their weights renormalized (as llama.cpp, whatever the file's
    expert_weights_norm / expert_weights_scale)."""
    paths, fixture = lfm2_files
    model = _model(paths["lfm2moe_f32"], "numba")
    c = model.config
    assert c.arch == "lfm2moe" and c.n_layer_dense_lead == 2 and len(model.moe_layers()) == 4
    assert (c.moe.gating, c.moe.norm_weights, c.moe.weights_scale, c.moe.n_expert_used) == ("sigmoid", True, 1.0, 2)
    model.reset_expert_counts()
    model.forward(fixture["ids"], KVCache.for_model(model, N_CTX))
    counts = model.expert_counts()  # (moe layer, expert)
    assert counts.shape == (4, 8) and (counts.sum(1) == 2 * len(fixture["ids"])).all() and (counts > 0).sum() > 16


# -- the convolution's state lives in the cache ---------------------------------------------------------


@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_equals_batch(name, kv_type, lfm2_files):
    """The rows a convolution reads are written to the cache first and read back from it: a token gets
    the same bits in a batch as alone, in every storage format (Numba: its matmuls give a row the bits it
    gets alone)."""
    paths, fixture = lfm2_files
    ids = fixture["ids"]
    model = _model(paths[name], "numba", kv_type)
    full = model.forward(ids, KVCache.for_model(model, N_CTX))
    cache = KVCache.for_model(model, N_CTX)
    rows = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.array_equal(full, rows), np.abs(full - rows).max()


@pytest.mark.parametrize("backend", ["numba", NATIVE])
def test_verify_pass_is_bit_identical_to_single_steps(backend, lfm2_files):
    """As a speculative verify pass runs: k wrong drafts, rolled back, then k right ones, for several k;
    every row has the bits of one-token steps."""
    paths, fixture = lfm2_files
    tokens = fixture["ids"]
    for name in NAMES:
        model = _model(paths[name], backend)
        single = KVCache.for_model(model, N_CTX)
        model.forward(tokens[:7], single, all_logits=False)
        one_by_one = np.concatenate([model.forward(tokens[i : i + 1], single) for i in range(7, len(tokens))])
        for k in (2, 3, 5):
            cache = KVCache.for_model(model, N_CTX)
            model.forward(tokens[:7], cache, all_logits=False)
            rows, i = [], 7
            while i < len(tokens):
                model.forward((tokens[i : i + k] + 7) % model.n_vocab, cache)
                cache.truncate(i)
                rows.append(model.forward(tokens[i : i + k], cache))
                i += k
            assert np.array_equal(np.concatenate(rows), one_by_one), (name, k)


@pytest.mark.parametrize("name", NAMES)
def test_rollback_equals_a_fresh_run(name, lfm2_files):
    """truncate(n) after running past n, at every n (inside blocks, at their edges, within L - 1 of the
    start), then the rest: the logits of a fresh run, bit for bit."""
    paths, fixture = lfm2_files
    ids = fixture["ids"]
    model = _model(paths[name], "numba")
    fresh = model.forward(ids, KVCache.for_model(model, N_CTX))
    cache = KVCache.for_model(model, N_CTX)
    model.forward((ids + 11) % model.n_vocab, cache)  # other tokens first: a state to throw away
    for n in [0, 1, 2, 5, 31, 32, 33, 40, 46, 3]:
        cache.truncate(0)
        model.forward(ids[: n + 1], cache)
        model.forward((ids[n + 1 :] + 5) % model.n_vocab, cache)  # a wrong continuation
        cache.truncate(n)
        assert np.array_equal(model.forward(ids[n:], cache), fresh[n:]), n


@pytest.mark.parametrize("name", NAMES)
def test_shared_prefix_then_truncate_equals_a_fresh_run(name, lfm2_files):
    """Sequences in one pool: b starts from a's first n tokens (full blocks shared by reference, the rest
    copied), both go on differently, and a then rolls back into a block b shares (copy on write): every
    continuation gives a fresh run's logits."""
    paths, fixture = lfm2_files
    ids = fixture["ids"]
    model = _model(paths[name], "numba")
    other = np.concatenate([ids[:36], (ids[36:] + 3) % model.n_vocab])
    fresh_ids, fresh_other = (model.forward(t, KVCache.for_model(model, N_CTX)) for t in (ids, other))
    pool = BlockPool.for_model(model, 4 * N_CTX, block_size=16)
    a = KVCache.for_model(model, N_CTX, pool=pool)
    model.forward(ids, a)
    for n in (36, 32, 17, 2):
        b = KVCache.for_model(model, N_CTX, pool=pool)
        b.copy_prefix(a, n)
        shared = set(a.blocks) & set(b.blocks)
        assert len(shared) == n // 16
        assert np.array_equal(model.forward(other[n:], b), fresh_other[n:]), n
        b.release()
    b = KVCache.for_model(model, N_CTX, pool=pool)
    b.copy_prefix(a, 32)
    a.truncate(20)  # into the first shared block: a writes into a copy of its own
    assert np.array_equal(model.forward(ids[20:], a), fresh_ids[20:])
    assert np.array_equal(model.forward(other[32:], b), fresh_other[32:])
    # from another pool: copied (bit for bit), or converted through float32 when its format differs
    c = KVCache.for_model(model, N_CTX, pool=BlockPool.for_model(model, N_CTX))
    c.copy_prefix(a, 30)
    assert np.array_equal(model.forward(ids[30:], c), fresh_ids[30:])
    d = KVCache.for_model(model, N_CTX, pool=BlockPool.for_model(model, N_CTX, kv_type="f32"))
    d.copy_prefix(a, 30)
    assert d.pool.conv.dtype == np.float32 and a.pool.conv.dtype == np.float16
    assert np.array_equal(d.pool.conv[:, d.cells[:30]], a.pool.conv[:, a.cells[:30]].astype(np.float32))


@pytest.mark.parametrize("backend", ["numba", NATIVE])
def test_sequences_in_one_pass_equal_each_alone(backend, lfm2_files):
    """DecoderModel.forward_many: sequences of several lengths, fresh and resumed, in one pool and in
    caches of their own, get the bits they get alone."""
    paths, fixture = lfm2_files
    ids = fixture["ids"]
    for name in NAMES:
        model = _model(paths[name], backend)
        pool = BlockPool.for_model(model, 4 * N_CTX)
        starts = [ids[:10], ids[5:25], None, ids[::-1][:3]]
        steps = [[ids[10:13], ids[13:14]], [ids[25:26], ids[26:40]], [ids[:17], ids[17:18]], [ids[3:4], ids[4:9]]]
        alone, together = [], []
        for i, (start, step) in enumerate(zip(starts, steps)):
            c = KVCache.for_model(model, N_CTX)
            if start is not None:
                model.forward(start, c)
            alone.append([model.forward(t, c) for t in step])
            cache = KVCache.for_model(model, N_CTX, pool=pool if i % 2 == 0 else None)
            if start is not None:
                model.forward(start, cache)
            together.append(cache)
        out = [model.forward_many([s[j] for s in steps], together, all_logits=True) for j in range(2)]
        for i in range(len(steps)):
            for j in range(2):
                assert np.array_equal(out[j][i], alone[i][j]), (name, i, j)


# -- decoding: speculation and the batched runner ---------------------------------------------------------


PROMPTS = [[1, 5, 6, 7], [1, 100, 30, 2, 77, 9], [1, 44, 45, 46, 44, 45, 46, 44, 45]]


def _tokens(llm, prompt, n, spec=None):
    stats = GenerationStats()
    text = "".join(generate_stream(llm.model, llm.tokenizer, prompt, llm.n_ctx, GREEDY, n, (), stats, spec))
    return stats.tokens, text, stats


@pytest.mark.parametrize("backend", ["numba", NATIVE])
def test_greedy_speculation_equals_plain_decoding(backend, lfm2_files):
    """n-gram lookup, the model drafting for itself (every draft stands) and another LFM2 as a weak draft
    (rejections everywhere): the same tokens and text as plain decoding."""
    paths, _ = lfm2_files
    llm = load(str(paths["lfm2_q8_0"]), n_ctx=N_CTX, backend=backend, progress=False)
    weak = load(str(paths["lfm2_swa_f16"]), n_ctx=N_CTX, backend=backend, progress=False).model
    fixed = SpecConfig(draft_p_min=None)
    n_drafted = n_rejected = 0
    for prompt in PROMPTS:
        want, text, _ = _tokens(llm, prompt, 40)
        specs = [Speculator.ngram(CostModel(), SpecConfig(ngram_min=1, ngram_max=2, draft_max=3))]
        specs += [Speculator.draft(m, llm.n_ctx, CostModel(), dataclasses.replace(fixed, draft_max=k))
                  for m in (llm.model, weak) for k in (1, 4)]  # fmt: skip
        for spec in specs:
            got, got_text, stats = _tokens(llm, prompt, 40, spec)
            assert got == want and got_text == text, (prompt, spec.proposer.kind)
            if getattr(spec.proposer, "model", None) is llm.model:
                assert stats.n_accepted == stats.n_drafted > 0
            n_drafted += stats.n_drafted
            n_rejected += stats.n_drafted - stats.n_accepted
    assert n_rejected > 0 and n_drafted > n_rejected


def _collect(handle):
    text, fin = "", None
    for ev in handle.events_sync(timeout=120):
        if isinstance(ev, Finish):
            fin = ev
        else:
            text += ev
    return text, fin


def test_batched_runner_reuses_a_prefix_and_equals_alone(lfm2_files):
    """The server's runner: requests with a common prompt prefix, run side by side in one pool, the later
    ones starting from a finished one's cache (its convolution rows with it): the text of each alone."""
    paths, fixture = lfm2_files
    llm = load(str(paths["lfm2_q8_0"]), n_ctx=N_CTX, backend="numba", progress=False)
    common = [1] + [int(t) for t in fixture["ids"][:40]]
    prompts = [common + tail for tail in ([7, 8], [9], [200, 201, 202])]
    serial = SerialRunner(llm)
    serial.start()
    alone = [_collect(serial.submit(p, GREEDY, 16)) for p in prompts]
    serial.stop()
    runner = BatchRunner(llm, parallel=2, prefill_chunk=16)
    runner.start()
    try:
        first = _collect(runner.submit(prompts[0], GREEDY, 16))
        together = [first] + [_collect(h) for h in [runner.submit(p, GREEDY, 16) for p in prompts[1:]]]
    finally:
        runner.stop()
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert runner.stats()["prefix_tokens_reused"] >= 2 * len(common)


def test_q8_0_cache_needs_rows_in_blocks_of_32(tmp_path):
    from lfm2_models import write_tiny_lfm2
    from gguf import GGMLQuantizationType as T

    path = write_tiny_lfm2(tmp_path / "m.gguf", T.F32, n_embd=80, n_head=2, n_head_kv=1, head_dim=32)
    model = build_model(GGUFFile(path))
    with pytest.raises(EdgeInferError, match="convolution rows hold 80"):
        model.set_kv_type("q8_0")
    model.set_kv_type("f32")


def test_a_bidirectional_lfm2_is_refused_in_one_sentence(tmp_path):
    from lfm2_models import write_tiny_lfm2
    from gguf import GGMLQuantizationType as T

    from edgeinfer.errors import UnsupportedArchitectureError

    path = write_tiny_lfm2(tmp_path / "m.gguf", T.F32, causal=False)
    with pytest.raises(UnsupportedArchitectureError, match="bidirectional LFM2"):
        build_model(GGUFFile(path))
    info = model_info(str(path))
    assert info["runnable"] is False and "bidirectional" in " ".join(info["not_runnable_why"])


def test_tokenizer_lfm2_pre_adds_bos_as_llama_cpp(lfm2_files):
    """tokenizer.ggml.pre 'lfm2' is llama3's pre-tokenizer (merges ignored); where the file has no
    tokenizer.ggml.add_bos_token, llama.cpp adds BOS for that group (llama_vocab::impl::load): on this
    file llama-cpp-python 0.3.36's tokenize(b"", add_bos=True) gives [1] and add_bos_token() True."""
    paths, _ = lfm2_files
    llm = load(str(paths["lfm2_q8_0"]), n_ctx=64, backend="numba", progress=False)
    assert "tokenizer.ggml.add_bos_token" not in llm.metadata
    assert llm.tokenize("") == [1] and llm.tokenize("", add_special=False) == []
