"""Gemma 4 (arch/gemma4.py) on tiny random models with the family's real tensor names and keys
(tests/gemma4_models.py: E2B-, E4B-, 31B- and 26B-A4B-like), against llama.cpp's logits on the same
files (tests/fixtures/logits_gemma4.npz, made by tests/fixtures/make_gemma4_fixture.py); batched = token
by token = several sequences at once; the per-layer KV geometry of the cache; the experts' routing; the
chat prompt of llama.cpp's Gemma 4 vocabulary; a fused QKV refused at load."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gemma4_models import GEMMA4_MODELS, N_CTX, write_all
from model_writer import assert_as_llamacpp_ran
from reference_model import agreement

import edgeinfer
from edgeinfer.arch import build_model
from edgeinfer.engine.kv_cache import BlockPool, KVCache, kv_bytes_per_token
from edgeinfer.errors import UnsupportedArchitectureError
from edgeinfer.gguf import GGUFFile
from edgeinfer.info import model_info
from edgeinfer.kernels import get_backend
from edgeinfer.kernels.reference import ReferenceBackend

FIXTURE = Path(__file__).parent / "fixtures" / "logits_gemma4.npz"


def _backend(name):
    if name == "reference":
        return ReferenceBackend()
    try:
        return get_backend(name)
    except Exception as e:  # the native extension is not built here
        pytest.skip(f"{name}: {e}")


@pytest.fixture(scope="module")
def gemma4_files(tmp_path_factory):
    fixture = np.load(FIXTURE)
    paths = write_all(tmp_path_factory.mktemp("gemma4"))
    assert_as_llamacpp_ran(paths, fixture, "make_gemma4_fixture.py")
    return paths, fixture


def _model(path, backend="reference", kv_type="f16"):
    model = build_model(GGUFFile(path), _backend(backend))
    model.set_kv_type(kv_type)
    return model


def _top5(values: np.ndarray, ref: np.ndarray, top: np.ndarray) -> float:
    return float(np.abs(np.take_along_axis(values, top[:, :5], -1) - np.take_along_axis(ref, top[:, :5], -1)).mean())


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
@pytest.mark.parametrize("name", list(GEMMA4_MODELS))
def test_matches_llama_cpp(name, backend, gemma4_files):
    """Teacher-forced logits at every position: argmax agreement >= 0.98 (near-ties within half a logit
    count), and the mean top-5 difference within twice llama.cpp's own noise (its batched against its
    token-by-token run; for a Q8_0 model also its Q8_0 activations against float ones on the same
    weights), 0.005 of the largest logit or 0.02, whichever is larger."""
    paths, fixture = gemma4_files
    ids = fixture["ids"]
    theirs = fixture[f"{name}.logits"].astype(np.float32)
    model = _model(paths[name], backend)
    ours = model.forward(ids, KVCache.for_model(model, N_CTX))
    top = fixture[f"{name}.seq_top_ids"]
    a = agreement(ours, {"top_ids": top, "top_logits": np.take_along_axis(theirs, top, -1)})
    assert a["argmax"] >= 0.98, a
    batch_top = np.take_along_axis(theirs, top[:, :5], -1)
    own = float(np.abs(fixture[f"{name}.seq_top_logits"][:, :5] - batch_top).mean())
    if f"{name}.float_top_logits" in fixture:
        own = max(own, float(np.abs(fixture[f"{name}.float_top_logits"][:, :5] - batch_top).mean()))
    scale = float(np.abs(theirs).max())
    assert _top5(ours, theirs, top) <= max(2 * own, 0.005 * scale, 0.02), (_top5(ours, theirs, top), own, scale)


@pytest.mark.parametrize("name", list(GEMMA4_MODELS))
def test_token_by_token_equals_batch(name, gemma4_files):
    """The prompt (longer than every window) in one pass, token by token, and in chunks, give the same
    logits; so does it beside another sequence in one pass (shared-KV layers read each one's cache)."""
    paths, fixture = gemma4_files
    ids = fixture["ids"]
    model = _model(paths[name], kv_type="f32")
    full = model.forward(ids, KVCache.for_model(model, N_CTX))
    tol = 1e-4 * max(1.0, float(np.abs(full).max()))
    cache = KVCache.for_model(model, N_CTX)
    rows = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.abs(full - rows).max() <= tol
    cache = KVCache.for_model(model, N_CTX)
    chunks = np.concatenate([model.forward(ids[i : i + 7], cache) for i in range(0, len(ids), 7)])
    assert np.abs(full - chunks).max() <= tol
    pool = BlockPool.for_model(model, 4 * N_CTX)
    other = ids[::-1].copy()
    a, b = KVCache.for_model(model, N_CTX, pool=pool), KVCache.for_model(model, N_CTX, pool=pool)
    out_a, out_b = model.forward_many([ids, other], [a, b], all_logits=True)
    assert np.abs(full - out_a).max() <= tol
    assert np.abs(model.forward(other, KVCache.for_model(model, N_CTX)) - out_b).max() <= tol


def test_cache_holds_the_layers_with_kv_in_their_own_geometry(gemma4_files):
    """E2B-like: 4 of 7 layers keep K/V (the last 3 read layers 2 and 3); sliding layers 2 KV heads of 32,
    global ones 1 of 64; a truncated sequence and a copied prefix continue as the whole one does."""
    paths, fixture = gemma4_files
    model = _model(paths["gemma4_e2b_q8_0"], kv_type="f32")
    d = model.kv_dims()
    assert d["n_layer"] == 4 and d["n_head_kv"] == (2, 2, 2, 1) and d["head_dim"] == (32, 32, 32, 64)
    assert kv_bytes_per_token(d) == 4 * (3 * 2 * 32 * 2 + 1 * 64 * 2)  # f32: K and V of 4 layers
    assert model_info(str(paths["gemma4_e2b_q8_0"]))["kv_bytes_per_token"]["f32"] == kv_bytes_per_token(d)
    pool = BlockPool.for_model(model, 4 * N_CTX)
    assert pool.block_nbytes == kv_bytes_per_token(d) * pool.block_size and len(pool.groups) == 2
    assert [kv[0].shape[1:] for kv in pool.layers] == [(2, 32), (2, 32), (2, 32), (1, 64)]
    ids = fixture["ids"]
    full = model.forward(ids, KVCache.for_model(model, N_CTX, pool=pool))
    cache = KVCache.for_model(model, N_CTX, pool=pool)
    model.forward(ids, cache)
    cache.truncate(30)
    tol = 1e-4 * float(np.abs(full).max())  # the same, but for the matmuls' row blocking
    assert np.abs(model.forward(ids[30:], cache) - full[30:]).max() <= tol
    for src_pool in (pool, BlockPool.for_model(model, 4 * N_CTX, kv_type="f32")):  # shared blocks; copied
        src = KVCache.for_model(model, N_CTX, pool=src_pool)
        model.forward(ids[:40], src)
        dst = KVCache.for_model(model, N_CTX, pool=pool)
        dst.copy_prefix(src, 35)
        assert np.abs(model.forward(ids[35:], dst) - full[35:]).max() <= tol


def test_the_window_shapes_the_logits(gemma4_files):
    """The sliding window matters on these prompts: without it llama.cpp's logits are not reproduced
    (the agreement above is no accident of prompts shorter than the window)."""
    paths, fixture = gemma4_files
    ids = fixture["ids"]
    theirs = fixture["gemma4_e4b_f16.logits"].astype(np.float32)
    model = _model(paths["gemma4_e4b_f16"], kv_type="f32")
    for block in model.blocks:
        block.attn.n_swa = 0
    ours = model.forward(ids, KVCache.for_model(model, N_CTX))
    assert np.abs(ours - theirs)[10:].max() > 0.1  # beyond the window of 6


def test_the_experts_route_as_llama_cpp_does(gemma4_files):
    """26B-A4B-like: every layer has 8 experts, 2 per token; the routing spreads over them (so the logits
    above exercise many experts), and a prompt run token by token picks the same ones as in one batch."""
    paths, fixture = gemma4_files
    ids = fixture["ids"]
    model = _model(paths["gemma4_26b_a4b_q8_0"], "numba", kv_type="f32")
    model.forward(ids, KVCache.for_model(model, N_CTX))
    counts = model.expert_counts()
    assert counts.shape == (6, 8) and (counts.sum(1) == 2 * len(ids)).all() and (counts > 0).mean() > 0.9
    model.reset_expert_counts()
    cache = KVCache.for_model(model, N_CTX)
    for t in ids:
        model.forward(np.array([t]), cache)
    assert np.array_equal(model.expert_counts(), counts)


def test_a_fused_qkv_is_refused_at_load_in_one_sentence(tmp_path, gemma4_files):
    paths, _ = gemma4_files
    r = gguf.GGUFReader(str(paths["gemma4_31b_f16"]))
    w = gguf.GGUFWriter(str(tmp_path / "qkv.gguf"), "gemma4")
    for key, f in r.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            vt = f.types[0]
            w.add_array(key, f.contents()) if vt == gguf.GGUFValueType.ARRAY else w.add_key_value(key, f.contents(), vt)
    for t in r.tensors:
        w.add_tensor(t.name.replace("blk.0.attn_q.", "blk.0.attn_qkv."), np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError) as e:
        edgeinfer.load(str(tmp_path / "qkv.gguf"))
    message = str(e.value)
    assert "attn_qkv" in message and message.endswith(".") and message.count(". ") == 0
    info = model_info(str(tmp_path / "qkv.gguf"))
    assert info["runnable"] is False and any("attn_qkv" in why for why in info["not_runnable_why"])


def test_info_says_the_files_are_runnable(gemma4_files):
    paths, _ = gemma4_files
    for path in paths.values():
        assert model_info(str(path))["runnable"] is True, model_info(str(path))["not_runnable_why"]


def test_a_gemma4_file_loads_and_generates(gemma4_files):
    """Through the public surface: load(), logits() (llama.cpp's argmax), generate() at temperature 0 with
    and without speculation (the placeholder vocabulary: the ids are fed directly)."""
    paths, fixture = gemma4_files
    llm = edgeinfer.load(str(paths["gemma4_e2b_q8_0"]), n_ctx=N_CTX)
    ids = [int(t) for t in fixture["ids"]]
    logits = llm.logits(ids)
    theirs = fixture["gemma4_e2b_q8_0.logits"].astype(np.float32)
    assert logits.shape == (len(ids), 256) and (logits.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9
    assert llm.kv_bytes_per_token() == kv_bytes_per_token(llm.model.kv_dims())
    plain = llm.generate(ids, max_tokens=12, temperature=0.0, speculative=None)
    assert plain == llm.generate(ids, max_tokens=12, temperature=0.0, speculative="ngram")


def test_gemma4_chat_prompt_with_the_real_vocabulary():
    """llama.cpp's Gemma 4 vocabulary (models/ggml-vocab-gemma-4.gguf, with the official template): the
    file's template and the built-in agree on a plain conversation; the prompt tokenizes with one BOS and
    the turn markers as single tokens; <turn|> ends generation."""
    from test_chat_template import BUILTIN_EXPECTED, CONVERSATION
    from test_tokenizer_corpus import corpus_dir

    from edgeinfer.tokenizer import Tokenizer
    from edgeinfer.tokenizer.chat import ChatTemplate, builtin_template

    folder = corpus_dir()
    if folder is None:
        pytest.skip("llama.cpp's vocabulary corpus is not here and pip could not fetch it")
    f = GGUFFile(str(folder / "ggml-vocab-gemma-4.gguf"))
    tmpl = ChatTemplate.from_metadata(f.metadata)
    assert tmpl.name == "file" and (tmpl.bos_token, tmpl.eos_token) == ("<bos>", "<eos>")
    text = tmpl.render(CONVERSATION)
    assert text == BUILTIN_EXPECTED["gemma4"][2]
    assert text == ChatTemplate(builtin_template("gemma4"), "gemma4", "<bos>", "<eos>").render(CONVERSATION)
    tok = Tokenizer.from_gguf(f)
    ids = tok.encode(text, add_special=not tmpl.starts_with_bos(text), parse_special=True)
    pieces = [tok.token_text(i) for i in ids]
    assert pieces[0] == "<bos>" and pieces.count("<bos>") == 1
    assert pieces.count("<|turn>") == 5 and pieces.count("<turn|>") == 4 and pieces[-3:-1] == ["thought", "\n"]
    assert tok.is_eog(tok.encode("<turn|>", add_special=False, parse_special=True)[0])
