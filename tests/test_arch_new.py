"""The architectures of issue 19 (phi3, gemma2, granite, smollm3) on tiny random models with each
family's real tensor names and keys (tests/arch_models.py), against llama.cpp's logits on the same
files (tests/fixtures/logits_archs.npz, made by tests/fixtures/make_arch_fixture.py); and the one-sentence
refusals at load for what edgeinfer does not run (architecture, tensor type, tokenizer), which
`edgeinfer info` reports before a load."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from arch_models import ARCH_MODELS, N_CTX, write_all
from gguf import GGMLQuantizationType as T
from model_writer import assert_as_llamacpp_ran
from reference_model import agreement, write_tiny_model

import edgeinfer
from edgeinfer.arch import build_model
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.errors import TokenizerError, UnsupportedArchitectureError, UnsupportedTypeError
from edgeinfer.gguf import GGUFFile
from edgeinfer.info import format_info, model_info
from edgeinfer.kernels.reference import ReferenceBackend

FIXTURE = Path(__file__).parent / "fixtures" / "logits_archs.npz"


def _backend(name):
    if name == "reference":
        return ReferenceBackend()
    from edgeinfer.kernels import get_backend

    return get_backend(name)


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    fixture = np.load(FIXTURE)
    paths = write_all(tmp_path_factory.mktemp("archs"))
    assert_as_llamacpp_ran(paths, fixture, "make_arch_fixture.py")
    return paths, fixture


def _logits(path, backend="numba", kv_type="f16", n_ctx=N_CTX, ids=None):
    model = build_model(GGUFFile(path), _backend(backend))
    model.set_kv_type(kv_type)
    return model, model.forward(ids, KVCache.for_model(model, n_ctx))


def top5_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Mean |ours - llama.cpp| over llama.cpp's top 5 logits of every position."""
    top = np.argsort(-theirs, axis=-1, kind="stable")[:, :5]
    return float(np.abs(np.take_along_axis(ours, top, -1) - np.take_along_axis(theirs, top, -1)).mean())


def _fixture_top(theirs: np.ndarray, k: int = 16) -> dict:
    ids = np.argsort(-theirs, axis=-1, kind="stable")[:, :k]
    return {"top_ids": ids, "top_logits": np.take_along_axis(theirs, ids, -1)}


def _skip_unbuilt(backend: str) -> None:
    from edgeinfer.kernels import native_available

    if backend == "native" and not native_available():
        pytest.skip("edgeinfer._native is not built")


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
@pytest.mark.parametrize("name", list(ARCH_MODELS))
def test_matches_llama_cpp(name, backend, arch_files):
    """Teacher-forced logits at every position: argmax agreement >= 0.98 (near-ties within half a logit
    count), and the mean top-5 difference within twice llama.cpp's own batched-vs-token-by-token figure
    or 0.05 of the logit scale's hundredth, whichever is larger."""
    _skip_unbuilt(backend)
    paths, fixture = arch_files
    ids = fixture["ids"]
    theirs = fixture[f"{name}.logits"].astype(np.float32)
    _, ours = _logits(paths[name], backend, ids=ids)
    a = agreement(ours, _fixture_top(theirs))
    assert a["argmax"] >= 0.98, a
    seq_at_top = fixture[f"{name}.seq_top_logits"][:, :5]  # llama.cpp token by token at its batch's top 5
    own = float(np.abs(seq_at_top - np.take_along_axis(theirs, fixture[f"{name}.seq_top_ids"][:, :5], -1)).mean())
    scale = float(np.abs(theirs).max())
    assert top5_diff(ours, theirs) <= max(2 * own, 0.005 * scale, 0.02), (top5_diff(ours, theirs), own, scale)


@pytest.mark.parametrize("name", list(ARCH_MODELS))
def test_token_by_token_equals_batch(name, arch_files):
    paths, fixture = arch_files
    ids = fixture["ids"]
    model, full = _logits(paths[name], "reference", kv_type="f32", ids=ids)
    cache = KVCache.for_model(model, N_CTX)
    rows = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.abs(full - rows).max() <= 1e-4 * max(1.0, np.abs(full).max())


def test_phi3_rope_factors_follow_the_context(arch_files):
    """LongRoPE: rope_factors_short up to rope.scaling.original_context_length (64 here), long beyond."""
    paths, fixture = arch_files
    ids = fixture["ids"]
    _, long = _logits(paths["phi3_long_q8_0"], "reference", "f32", N_CTX, ids)
    _, short = _logits(paths["phi3_long_q8_0"], "reference", "f32", 64, ids)
    assert np.abs(long - short).max() > 1e-2


def test_gemma2_logits_are_soft_capped(arch_files):
    paths, fixture = arch_files
    _, logits = _logits(paths["gemma2_q8_0"], "reference", ids=fixture["ids"])
    assert np.abs(logits).max() < 4.0  # final_logit_softcapping 4


@pytest.mark.parametrize("backend", ["numba", "native"])
def test_gemma2_soft_capped_attention_is_compiled(backend, arch_files, monkeypatch):
    """On the compiled backends Gemma 2's soft-capped attention runs in their own kernels (Numba, C), not
    in numpy's twin, and gives the twin's logits within float rounding (the same backend otherwise)."""
    from edgeinfer.arch import gemma2

    _skip_unbuilt(backend)
    paths, fixture = arch_files

    def logits(b):
        model = build_model(GGUFFile(paths["gemma2_q8_0"]), b)
        return model.forward(fixture["ids"], KVCache.for_model(model, N_CTX))

    twin = _backend(backend)
    twin.attention_softcap = None  # what a backend without its own gets: numpy's attention with the cap
    want = logits(twin)

    def numpy_attention(*args, **kwargs):
        raise AssertionError("the numpy attention ran")

    monkeypatch.setattr(gemma2, "attention", numpy_attention)
    got = logits(_backend(backend))
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


# -- what edgeinfer does not run: one sentence at load, and `edgeinfer info` says so first --------------


def _rewrite(src: Path, dst: Path, arch: str | None = None, tokenizer: str | None = None,
             retype: dict | None = None) -> Path:  # fmt: skip
    """A copy of a GGUF file with another architecture name, tokenizer model, or tensors' raw types."""
    r = gguf.GGUFReader(str(src))
    old = r.fields["general.architecture"].contents()
    new = arch or old
    w = gguf.GGUFWriter(str(dst), new)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = f.contents()
        if key == "tokenizer.ggml.model" and tokenizer:
            value = tokenizer
        if key.startswith(old + "."):
            key = new + key[len(old) :]
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vt)
    for t in r.tensors:
        if retype and t.name in retype:
            qtype, raw = retype[t.name]
            w.add_tensor(t.name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama.gguf", "llama", T.F32, n_ff=256, vocab=True)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(arch="mamba2"), UnsupportedArchitectureError, ["'mamba2'", "Supported:", "phi3", "lfm2", "smollm3"]),
        (dict(tokenizer="t5"), TokenizerError, ["'t5'", "supported", "gemma4", "bert"]),
        (dict(retype={"blk.0.ffn_down.weight": (T.NVFP4, np.zeros((64, 144), np.uint8))}), UnsupportedTypeError,
         ["NVFP4 (1 tensor)", "supported types:", "Q4_K"]),
    ],
)  # fmt: skip
def test_what_is_not_run_is_refused_at_load_in_one_sentence(tmp_path, tiny_llama, change, error, words):
    path = _rewrite(tiny_llama, tmp_path / "x.gguf", **change)
    with pytest.raises(error) as e:
        edgeinfer.load(str(path))
    message = str(e.value)
    assert all(w in message for w in words), message
    info = model_info(str(path))
    assert info["runnable"] is False and any(all(w in why for w in words) for why in info["not_runnable_why"])
    assert "runnable  no: " in format_info(info)


def test_info_says_a_runnable_file_is_runnable(tiny_llama, arch_files):
    assert model_info(str(tiny_llama))["runnable"] is True
    paths, _ = arch_files
    for path in paths.values():
        assert model_info(str(path))["runnable"] is True, model_info(str(path))["not_runnable_why"]
