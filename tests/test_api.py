"""The library surface: edgeinfer.load and LLM on the real models."""

from __future__ import annotations

import pytest

import edgeinfer
from edgeinfer.api import load
from edgeinfer.errors import EdgeInferError, GGUFError, ModelNotFoundError


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load(smollm2_path, n_ctx=512)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return load(gemma3_path, n_ctx=512)


def test_load_by_name_and_path(smollm2, smollm2_path):
    llm = load("smollm2-135m")
    assert llm.path == smollm2_path and llm.architecture == "llama" and llm.n_vocab == 49152
    assert smollm2.n_ctx == 512 and smollm2.n_ctx_train == 8192 and smollm2.n_threads >= 1


def test_tokenize_roundtrip(smollm2, gemma3):
    text = "Hello, wörld! 東京 🙂  code: x = [1, 2]"
    for llm in (smollm2, gemma3):
        ids = llm.tokenize(text, add_special=False)
        assert llm.detokenize(ids) == text
    assert gemma3.tokenize("hi")[0] == 2  # Gemma adds BOS
    assert smollm2.tokenize("hi") == smollm2.tokenize("hi", add_special=False)  # SmolLM2 does not
    assert smollm2.tokenize("<|im_start|>", parse_special=True) == [1]
    assert smollm2.tokenize("<|im_start|>") != [1]


def test_chat_prompt_has_one_bos(gemma3, smollm2):
    ids = gemma3.tokenize_chat([{"role": "user", "content": "Hi"}])
    assert ids[:2] == [2, 105] and ids.count(2) == 1  # <bos><start_of_turn>
    assert gemma3.detokenize(ids).endswith("<start_of_turn>model\n")
    text = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load("no-such-model")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope" * 10)
    with pytest.raises(GGUFError):
        load(bad)
    with pytest.raises(EdgeInferError, match="n_ctx"):
        load("smollm2-135m", n_ctx=0)
    with pytest.raises(EdgeInferError, match="n_threads"):
        load("smollm2-135m", n_threads=-2)
    with pytest.raises(TypeError):
        load("smollm2-135m").tokenize(b"bytes")


def test_kv_type(smollm2, smollm2_path):
    """load(kv_type=...): f16 by default, the caches it makes follow it, half of f32's memory per token
    (q8_0 about half again); a bad name is a sentence naming the allowed ones, before the load."""
    from edgeinfer.engine.kv_cache import BlockPool, KVCache

    assert smollm2.kv_type == "f16" and "kv_type='f16'" in repr(smollm2)
    per_token = {}
    for kv in ("f32", "f16", "q8_0"):
        llm = load(smollm2_path, n_ctx=64, kv_type=kv)
        per_token[kv] = llm.kv_bytes_per_token()
        assert KVCache.for_model(llm.model, 8).kv_type.name == kv
        pool = BlockPool.for_model(llm.model, 4096)
        assert pool.nbytes == 4096 * per_token[kv] == pool.k.nbytes + pool.v.nbytes
    assert per_token["f32"] == 30 * 3 * (64 + 64) * 4 and per_token["f16"] * 2 == per_token["f32"]
    assert per_token["q8_0"] * 128 == per_token["f32"] * 34
    with pytest.raises(EdgeInferError, match="kv_type must be one of 'f16', 'q8_0', 'f32'"):
        load(smollm2_path, kv_type="q4_0")


def test_top_level_exports():
    assert edgeinfer.load is load and edgeinfer.__version__ and issubclass(edgeinfer.GGUFError, edgeinfer.EdgeInferError)
