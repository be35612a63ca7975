"""The MoE test oracle checked against llama.cpp: tests/reference_moe.py's tiny MoE files are the ones
llama.cpp ran (same sha256) and its float64 reference agrees with llama.cpp's logits
(tests/fixtures/logits_moe.npz, made by tests/fixtures/make_moe_fixture.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from reference_model import agreement, write_tiny_model
from reference_moe import MOE_LLAMACPP, ReferenceMoE, _Reader, write_moe_llamacpp, write_tiny_moe

FIXTURE = Path(__file__).parent / "fixtures" / "logits_moe.npz"


@pytest.fixture(scope="module")
def moe_fixture():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def moe_files(tmp_path_factory, smollm2_path):
    return write_moe_llamacpp(tmp_path_factory.mktemp("moe"), smollm2_path)


@pytest.mark.parametrize("name", list(MOE_LLAMACPP))
def test_reference_moe_matches_llamacpp(name, moe_files, moe_fixture):
    path = moe_files[name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(moe_fixture[f"{name}.sha256"]), "not the file llama.cpp ran"
    ids = moe_fixture["ids"].tolist()
    ref = ReferenceMoE(path)
    top = {"top_ids": moe_fixture[f"{name}.top_ids"], "top_logits": moe_fixture[f"{name}.top_logits"]}
    result = agreement(ref.logits(ids), top)
    # llama.cpp rounds activations to 8 bits; the reference with that rounding matches it to 1e-4, so
    # these bounds are llama.cpp's noise (top logits ~12.5), not the reference's
    assert result["argmax"] >= 0.98, result
    assert result["top1_mean"] < 0.08 and result["topk_mean"] < 0.08, result
    assert result["top1_max"] < 0.4, result
    # the routing is real: each layer spreads the tokens over the experts
    for chosen in ref.last_routing:
        assert chosen.shape == (len(ids), ref.n_expert_used)
        assert all(len(set(row)) == ref.n_expert_used for row in chosen.tolist())
        if ref.n_expert_used < ref.n_expert:
            assert len({tuple(sorted(row)) for row in chosen.tolist()}) >= 4
            assert len(np.unique(chosen)) >= min(ref.n_expert, 4)


def test_fast_reader_is_gguf_reader(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "llama", T.Q8_0, vocab=True)
    fast, slow = _Reader(str(path)), gguf.GGUFReader(str(path))
    assert list(fast.fields) == list(slow.fields)
    for key, field in slow.fields.items():
        assert fast.fields[key].types == field.types and fast.fields[key].contents() == field.contents(), key
    tensors = lambda r: [(t.name, t.tensor_type, t.data_offset, t.shape.tolist()) for t in r.tensors]  # noqa: E731
    assert tensors(fast) == tensors(slow)


def test_routing_options(tmp_path, smollm2_path, moe_files):
    """The metadata the reference honours besides llama.cpp's per-family defaults, and router_ties."""
    x = np.random.default_rng(0).normal(size=64)
    plain = ReferenceMoE(moe_files["qwen2moe_q8_0"])
    chosen, weights = plain.route(x, 0)
    assert len(chosen) == 2 and sum(weights) < 1.0  # qwen2moe does not renormalize
    normed = ReferenceMoE(write_tiny_moe(
        tmp_path / "normed.gguf", "qwen2moe", tokenizer_from=smollm2_path, seed=MOE_LLAMACPP["qwen2moe_q8_0"][2]["seed"],
        extra_metadata={"expert_weights_norm": True, "expert_weights_scale": 2.5},
    ))
    chosen_n, weights_n = normed.route(x, 0)
    assert chosen_n == chosen and np.isclose(sum(weights_n), 2.5)
    assert np.allclose(np.array(weights_n) / 2.5, np.array(weights) / sum(weights))
    sig = ReferenceMoE(write_tiny_moe(
        tmp_path / "sigmoid.gguf", "qwen2moe", T.F32, tokenizer_from=smollm2_path, n_expert=4,
        extra_metadata={"expert_gating_func": 2}, router_ties=[(0, 2, 3)],
    ))
    router = sig.w["blk.0.ffn_gate_inp.weight"]
    assert np.array_equal(router[2], router[3])
    chosen_s, weights_s = sig.route(x, 0)
    logits = router @ x
    assert chosen_s == sorted(range(4), key=lambda e: (-logits[e], e))[:2]
    assert np.allclose(weights_s, 1 / (1 + np.exp(-logits[chosen_s])))
