"""bench/model_shapes.py: the shape files of Llama-3.2-1B/3B and Qwen3-1.7B in Q4_0, Q4_K_M and Q8_0
(real hyperparameters, llama.cpp's quantizer types), replicas edgeinfer loads, decode bytes, and
compare_llamacpp.py --shapes with a stand-in for llama-cpp-python. The replicas written here are the
same generator at a reduced width and depth (the real ones are 0.8-2 GB)."""

from __future__ import annotations

import importlib.util
import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import model_shapes as ms  # noqa: E402
from make_replica import write_replica  # noqa: E402

REAL = {  # model: (arch, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, rope base)
    "llama-3.2-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, 500000.0),
    "llama-3.2-3b": ("llama", 3072, 28, 24, 8, 128, 8192, 128256, 500000.0),
    "qwen3-1.7b": ("qwen3", 2048, 28, 16, 8, 128, 6144, 151936, 1000000.0),
}
SMALL = {"n_embd": 256, "n_ff": 512, "head_dim": 64, "n_head": 4, "n_head_kv": 2, "n_vocab": 640}


def test_shape_files_are_the_generators():
    assert set(ms.MODELS) == set(REAL)
    for shape in ms.shape_names():
        model, quant = ms.parse_shape(shape)
        assert ms.shape_file(shape).name == f"{model}-{quant}.json"
        assert ms.load_shape(shape) == json.loads(ms.dumps(ms.make_spec(model, quant))), (
            f"{shape}: rerun python bench/model_shapes.py"
        )
    with pytest.raises(ValueError, match="MODEL:QUANT"):
        ms.parse_shape("llama-3.2-1b:q5_k_s")


@pytest.mark.parametrize("shape", ms.shape_names())
def test_real_hyperparameters_and_types(shape):
    model, quant = ms.parse_shape(shape)
    arch, n_embd, n_layer, n_head, n_kv, hd, n_ff, n_vocab, base = REAL[model]
    spec = ms.load_shape(shape)
    m, t = spec["metadata"], {x["name"]: x for x in spec["tensors"]}
    assert m["general.architecture"] == arch and spec["n_vocab"] == n_vocab
    assert (m[f"{arch}.embedding_length"], m[f"{arch}.block_count"], m[f"{arch}.feed_forward_length"]) == (n_embd, n_layer, n_ff)
    assert (m[f"{arch}.attention.head_count"], m[f"{arch}.attention.head_count_kv"]) == (n_head, n_kv)
    assert m[f"{arch}.attention.key_length"] == hd and m[f"{arch}.rope.freq_base"] == base
    assert m["general.file_type"] == {"q4_0": 2, "q8_0": 7, "q4_k_m": 15}[quant]
    assert "output.weight" not in t and t["token_embd.weight"]["ne"] == [n_embd, n_vocab]  # tied
    assert t["blk.0.attn_q.weight"]["ne"] == [n_embd, n_head * hd]
    assert t["blk.0.attn_k.weight"]["ne"] == [n_embd, n_kv * hd]
    assert t[f"blk.{n_layer - 1}.ffn_down.weight"]["ne"] == [n_ff, n_embd]
    assert ("blk.0.attn_q_norm.weight" in t) == (arch == "qwen3")
    if arch == "llama":  # llama3 rope scaling: factor 1 for high frequencies, 32 for low ones
        f = t["rope_freqs.weight"]["values"]
        assert len(f) == hd // 2 and f[0] == 1.0 and f[-1] == 32.0 and all(a <= b for a, b in zip(f, f[1:]))
    else:
        assert "rope_freqs.weight" not in t
    per_layer = 11 if arch == "qwen3" else 9
    assert len(t) == n_layer * per_layer + (3 if arch == "llama" else 2)
    types = {x["type"] for x in spec["tensors"] if len(x["ne"]) == 1}
    assert types == {"F32"}
    embd = t["token_embd.weight"]["type"]
    layers = [x for x in spec["tensors"] if x["name"].startswith("blk.") and len(x["ne"]) == 2]
    if quant == "q8_0":
        assert embd == "Q8_0" and {x["type"] for x in layers} == {"Q8_0"}
    elif quant == "q4_0":
        assert embd == "Q6_K" and {x["type"] for x in layers} == {"Q4_0"}
    else:  # Q4_K_M: Q6_K for attn_v and ffn_down in the first and last eighth and every third layer between
        assert embd == "Q6_K"
        more = [i for i in range(n_layer) if i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2]
        for x in layers:
            il = int(x["name"].split(".")[1])
            sensitive = x["name"].endswith(("attn_v.weight", "ffn_down.weight"))
            assert x["type"] == ("Q6_K" if sensitive and il in more else "Q4_K"), x["name"]
        if model == "llama-3.2-1b":
            assert more == [0, 1, 4, 7, 10, 13, 14, 15]


def test_decode_bytes():
    tensors = {"token_embd.weight": ("Q8_0", [64, 100], 6800), "blk.0.w": ("Q8_0", [64, 64], 4352)}
    assert ms.decode_bytes(tensors) == (11152, 11152)  # tied: the embedding is the output head
    tensors["output.weight"] = ("Q8_0", [64, 100], 6800)
    assert ms.decode_bytes(tensors) == (4352 + 6800 + 68, 17952)  # one row of the embedding
    spec = ms.load_shape("llama-3.2-1b:q4_0")
    read, total = ms.decode_bytes({x["name"]: (x["type"], x["ne"], ms._nbytes(x["type"], x["ne"])) for x in spec["tensors"]})
    assert read == total and 760e6 < total < 766e6  # llama.cpp's Llama-3.2-1B Q4_0 without its tokenizer


@pytest.mark.parametrize("model", list(ms.MODELS))
def test_replica_loads_with_the_shape(model, tmp_path):
    import edgeinfer
    from edgeinfer.gguf import GGUFFile

    n_layer = 3
    for quant in ms.QUANTS:
        spec = ms.make_spec(model, quant, n_layer=n_layer, **SMALL)
        path = write_replica(spec, tmp_path / f"{model}-{quant}.gguf")
        f = GGUFFile(str(path))
        assert {n: t.type_name for n, t in f.tensors.items()} == {t["name"]: t["type"] for t in spec["tensors"]}
        assert list(f.tensors) == [t["name"] for t in spec["tensors"]]
        llm = edgeinfer.load(str(path), n_ctx=32, n_threads=1)
        c = llm.model.config
        assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab) == (
            ms.MODELS[model]["arch"], n_layer, 256, 4, 2, 64, 512, 640)  # fmt: skip
        assert c.tied_output and c.rope_freq_base == ms.MODELS[model]["rope_base"]
        assert c.rope_neox == (model.startswith("qwen3"))
        if "llama3_rope" in ms.MODELS[model]:
            want = next(t["values"] for t in spec["tensors"] if t["name"] == "rope_freqs.weight")
            np.testing.assert_array_equal(f.tensor("rope_freqs.weight").array().ravel(), np.float32(want))
        logits = llm.logits([1, 2, 3])
        assert logits.shape == (3, 640) and np.isfinite(logits).all()


FAKE_LLAMA_CPP = """
import time
__version__ = "0.0.fake"

def llama_print_system_info():
    return b"CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | OPENMP = 1 | REPACK = 1 |"

class Llama:
    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, verbose):
        self.n_ctx, self.n_past = n_ctx, 0

    def n_vocab(self):
        return 640

    def reset(self):
        self.n_past = 0

    def eval(self, tokens):
        assert self.n_past + len(tokens) <= self.n_ctx
        self.n_past += len(tokens)
        time.sleep(0.001 * len(tokens))
"""


def test_compare_llamacpp_shapes(tmp_path, monkeypatch, capsys):
    """--shapes: the replica (here a small one in place of the real file), isa, GB/s and the ceiling."""
    small = write_replica(ms.make_spec("llama-3.2-1b", "q4_k_m", n_layer=2, **SMALL), tmp_path / "small.gguf")
    monkeypatch.setattr(ms, "ensure_replica", lambda shape, seed=0, log=None: small)
    fake = tmp_path / "fake"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text(FAKE_LLAMA_CPP)
    python = tmp_path / "llama-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{fake}" exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    spec = importlib.util.spec_from_file_location("compare_llamacpp", BENCH / "compare_llamacpp.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)

    assert compare.main(["--llama-python", str(python), "--shapes", "list"]) == 0
    assert "llama-3.2-3b:q4_k_m" in capsys.readouterr().out
    out_json = tmp_path / "cmp.json"
    rc = compare.main(["--llama-python", str(python), "--shapes", "llama-3.2-1b:q4_k_m", "--threads", "1",
                       "--rounds", "1", "-r", "1", "-p", "4", "-n", "3", "--ceiling-gb", "0.02", "--json", str(out_json)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "read ceiling before, 1 threads" in out and "read ceiling after, 1 threads" in out
    assert "llama-3.2-1b:q4_k_m" in out and "GB/s" in out
    assert "llama.cpp's CPU backend: AVX AVX2 F16C FMA" in out
    report = json.loads(out_json.read_text())
    assert report["read_ceiling"]["1"]["gb_s"] > 0 and not report["failures"]
    tg = next(r for r in report["rows"] if r["test"] == "tg3")
    read, _ = ms.file_decode_bytes(small)
    d = tg["decode"]
    assert d["bytes_per_token"] == read
    assert d["edgeinfer_gb_s"] == pytest.approx(tg["summary"]["edgeinfer_median"] * read / 1e9)
    assert d["llamacpp_of_ceiling"] == pytest.approx(d["llamacpp_gb_s"] / d["ceiling_gb_s"])
    from edgeinfer.kernels import native_available

    if tg["backend"] == "native" and native_available():
        from edgeinfer.kernels.native import native_isa

        assert tg["isa"] == native_isa()
    pp = next(r for r in report["rows"] if r["test"] == "pp4")
    assert pp["decode"] is None
