"""Embeddings (llm.embed): the last hidden state after the output norm, pooled (mean or last token) and
L2-normalized, compared with llama.cpp's for the same model and pooling (tests/fixtures/embed_*.npz,
made by tests/fixtures/make_embed_fixture.py): cosine >= 0.999 on every text for SmolLM2 (measured
0.99956-0.99996). Gemma 3's hidden states are large (norms 60-155) and move with activation rounding:
edgeinfer's own float32 reference backend and its native 8-bit-activation kernels differ by cosine 0.998,
and each differs from llama.cpp by 0.996-0.9997 (mean 0.9977-0.9997, last 0.9958-0.9987); llama.cpp's own
embeddings with flash attention on and off differ by as much (mean 0.9976-0.9996, last 0.9949-0.9981), so
Gemma 3 is held to 0.995."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import ContextFullError, EdgeInferError

FIXTURES = Path(__file__).parent / "fixtures"
MIN_COSINE = {"smollm2": 0.999, "gemma3": 0.995}


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return edgeinfer.load(smollm2_path, n_ctx=512, progress=False)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return edgeinfer.load(gemma3_path, n_ctx=512, progress=False)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_matches_llama_cpp(name, pooling, request):
    llm = request.getfixturevalue(name)
    ref = np.load(FIXTURES / f"embed_{name}.npz")
    texts = [str(t) for t in ref["texts"]]
    for i, t in enumerate(texts):  # the same tokens as llama.cpp fed
        assert llm.tokenize(t) == ref[f"ids_{i}"].tolist()
    got = llm.embed(texts, pooling=pooling)  # one batched pass for all texts
    assert got.shape == ref[pooling].shape and got.dtype == np.float32
    cos = np.sum(got * ref[pooling], axis=1)
    assert cos.min() >= MIN_COSINE[name], cos
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # batching changes nothing: each alone, and in passes of a few tokens (a text spans passes)
    alone = np.stack([llm.embed(t, pooling=pooling) for t in texts])
    small = llm.embed([ref[f"ids_{i}"].tolist() for i in range(len(texts))], pooling=pooling, batch_tokens=5)
    assert np.abs(alone - got).max() < 2e-3 and np.abs(small - got).max() < 2e-3


def test_shapes_and_errors(smollm2):
    v = smollm2.embed("hello")
    assert v.shape == (smollm2.model.config.n_embd,)
    assert smollm2.embed([1, 2, 3]).shape == v.shape  # token ids are one input
    raw = smollm2.embed("hello", normalize=False)
    assert np.linalg.norm(raw) > 1.5 and np.allclose(raw / np.linalg.norm(raw), v, atol=1e-5)
    with pytest.raises(EdgeInferError, match="pooling"):
        smollm2.embed("x", pooling="cls")
    with pytest.raises(EdgeInferError, match="no tokens"):
        smollm2.embed([[]])
    with pytest.raises(EdgeInferError, match="vocabulary"):
        smollm2.embed([[1, 10**7]])
    with pytest.raises(ContextFullError):
        smollm2.embed([[1] * 600])


def test_passes_one_step_at_a_time(smollm2):
    """embed_passes: a job of forward passes (the server runs one per decoding step), the same vectors."""
    ids = [smollm2.tokenize("a short one"), smollm2.tokenize("a somewhat longer text that spans passes " * 3)]
    job = smollm2.embed_passes(ids, "mean", batch_tokens=8)
    steps = 1
    while not job.step():
        steps += 1
    assert steps == -(-sum(map(len, ids)) // 8)
    assert np.abs(job.result() - smollm2.embed(ids)).max() < 2e-3
    half = smollm2.embed_passes(ids, batch_tokens=8)
    half.step()
    half.close()  # abandoned midway: caches given back, no result
    with pytest.raises(EdgeInferError):
        half.result()
