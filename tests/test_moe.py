"""Mixture-of-Experts models end to end: tiny MoE GGUF files of each family (tests/reference_moe.py: random
weights, SmolLM2's real tokenizer, experts in Q8_0, Q4_0, F16, F32) against the float64 reference and
against llama.cpp's own logits on the same files (tests/fixtures/logits_moe.npz, made by
tests/fixtures/make_moe_fixture.py); routing edge cases; the rules read from metadata keys; what a forward
pass pages in; the expert counts of `run --verbose` and `bench`."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from model_writer import assert_as_llamacpp_ran
from reference_model import agreement
from reference_moe import MOE_FAMILIES, MOE_LLAMACPP, ReferenceMoE, write_moe_llamacpp, write_tiny_moe

from edgeinfer import cli
from edgeinfer.arch import build_model, load_config
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.errors import GGUFError, UnsupportedArchitectureError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import get_backend
from edgeinfer.nn.moe import MoE

FIXTURES = Path(__file__).parent / "fixtures"
FAST_BACKENDS = ["numba"]
try:
    from edgeinfer.kernels.native import available as _native_available

    if _native_available():
        FAST_BACKENDS.append("native")
except ImportError:  # pragma: no cover
    pass


def _backend(name):
    return get_backend(name) if name == "reference" else get_backend(name, n_threads=2)


def _model(path, backend="reference", kv_type="f32"):
    """The model of a file, its K/V in float32 unless told (the float64 reference's comparisons; llama.cpp's
    use f16, as llama.cpp itself)."""
    model = build_model(GGUFFile(path), _backend(backend) if isinstance(backend, str) else backend)
    model.set_kv_type(kv_type)
    return model


def _forward(model, ids):
    return model.forward(np.asarray(ids, np.int32), KVCache.for_model(model, 64))


@pytest.fixture(scope="module")
def moe_files(tmp_path_factory, smollm2_path):
    """The files llama.cpp ran, rewritten from their seeds (their sha256 must match), and its logits."""
    fixture = np.load(FIXTURES / "logits_moe.npz")
    paths = write_moe_llamacpp(tmp_path_factory.mktemp("moe"), smollm2_path)
    assert_as_llamacpp_ran(paths, fixture, "make_moe_fixture.py", what="tiny MoE model")
    return paths, fixture


@pytest.fixture(scope="module")
def references(moe_files):
    """float64 logits and routing of every file on the fixture's tokens (computed once)."""
    paths, fixture = moe_files
    ids = fixture["ids"]
    out = {}
    for name, path in paths.items():
        ref = ReferenceMoE(path)
        logits = ref.logits(ids)
        out[name] = (logits, list(ref.last_routing))
    return out


# -- loading --------------------------------------------------------------------------------------------


def test_every_family_loads_as_moe(moe_files):
    paths, _ = moe_files
    for name, (family, _, kw) in MOE_LLAMACPP.items():
        c = load_config(GGUFFile(paths[name]))
        assert c.moe is not None and c.moe.n_expert == kw.get("n_expert", 8)
        assert c.moe.n_expert_used == kw.get("n_expert_used", 2)
        assert c.moe.norm_weights == (family in ("mixtral", "qwen3moe"))
        model = _model(paths[name])
        assert len(model.moe_layers()) == c.n_layer
        assert all(isinstance(b.ffn, MoE) for b in model.blocks)
        assert (model.blocks[0].ffn.shared is not None) == (family == "qwen2moe")


# -- against the float64 reference ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
@pytest.mark.parametrize("name", list(MOE_LLAMACPP))
def test_matches_float64_reference(name, backend, moe_files, references):
    paths, fixture = moe_files
    want, _ = references[name]
    model = _model(paths[name], backend)
    got = _forward(model, fixture["ids"])
    scale = max(1.0, float(np.abs(want).max()))
    per_position = np.abs(got - want).max(axis=1) / scale
    if backend == "reference":  # float32 arithmetic: everywhere, and so every routing as float64's
        assert per_position.max() <= 1e-4
    else:
        # 8-bit activations, as llama.cpp's: a router near-tie may flip to the other expert, which moves
        # that position's logits by far more than the rounding (about one position in 30 here)
        assert np.mean(per_position <= 0.06) >= 0.9, np.round(per_position, 3).tolist()
        assert np.median(per_position) <= 0.03


@pytest.mark.parametrize("name", list(MOE_LLAMACPP))
def test_routing_matches_float64_reference(name, moe_files, references):
    """Which experts each token chose, layer by layer (ties included: the lower index wins)."""
    paths, fixture = moe_files
    _, ref_routing = references[name]
    model = _model(paths[name])
    _forward(model, fixture["ids"])
    for layer, chosen in zip(model.moe_layers(), ref_routing):
        want = np.bincount(chosen.reshape(-1), minlength=layer.n_expert)
        assert np.array_equal(layer.counts, want)
        assert (want > 0).sum() > 1  # the choice varies between tokens


def test_router_ties_are_resolved_to_the_lower_index(moe_files, references):
    """mixtral_ties copies expert 1's router row to expert 2 (layer 0), and so on: the twin with the
    higher index is chosen only together with its lower twin (never instead of it)."""
    _, ref_routing = references["mixtral_ties"]
    paths, fixture = moe_files
    model = _model(paths["mixtral_ties"], "numba")
    _forward(model, fixture["ids"])
    for il, a, b in MOE_LLAMACPP["mixtral_ties"][2]["router_ties"]:
        for row in ref_routing[il]:
            assert b not in row or a in row
    c0, c1 = model.moe_layers()[0].counts, model.moe_layers()[1].counts
    assert c0[2] <= c0[1] and c0[6] <= c0[4] and c1[3] <= c1[0] and c1[7] <= c1[5]


# -- against llama.cpp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_matches_llama_cpp(family, backend, moe_files):
    """Teacher-forced logits of every file of the family against llama.cpp's, all positions together.
    A router near-tie can go the other way in either program (both round activations to 8 bits): then
    that one position differs by a logit or two, which the bounds below leave room for, once."""
    paths, fixture = moe_files
    ours_all, top_ids, top_logits = [], [], []
    for name, (fam, _, _) in MOE_LLAMACPP.items():
        if fam != family:
            continue
        model = _model(paths[name], backend, kv_type="f16")
        ours = _forward(model, fixture["ids"])
        top = {"top_ids": fixture[f"{name}.top_ids"], "top_logits": fixture[f"{name}.top_logits"]}
        assert agreement(ours, top)["argmax"] >= 0.9, name
        ours_all.append(ours)
        top_ids.append(top["top_ids"])
        top_logits.append(top["top_logits"])
    a = agreement(np.concatenate(ours_all), {"top_ids": np.concatenate(top_ids), "top_logits": np.concatenate(top_logits)})
    assert a["argmax"] >= 0.98, a
    assert a["top1_mean"] <= 0.1, a
    diff = np.abs(
        np.take_along_axis(np.concatenate(ours_all), np.concatenate(top_ids).astype(np.int64), axis=1)[:, 0]
        - np.concatenate(top_logits)[:, 0]
    )
    assert np.median(diff) <= 0.06, a


# -- the cache, metadata rules, errors ------------------------------------------------------------------


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_token_by_token_equals_batch(tmp_path, smollm2_path, family):
    path = write_tiny_moe(tmp_path / f"{family}.gguf", family, tokenizer_from=smollm2_path, seed=3)
    model = _model(path, "numba")
    ids = np.random.default_rng(0).integers(0, 49152, 12).astype(np.int32)
    full = _forward(model, ids)
    cache = KVCache.for_model(model, 64)
    rows = np.concatenate([model.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.abs(full - rows).max() <= 1e-3 * np.abs(full).max()


@pytest.mark.parametrize(
    "family, keys",
    [
        ("qwen2moe", {"expert_weights_norm": True}),  # the file's key beats the family's default
        ("mixtral", {"expert_weights_norm": False, "expert_weights_scale": 2.0}),
        ("qwen3moe", {"expert_gating_func": 2}),  # sigmoid
    ],
)
def test_rules_come_from_the_files_keys(tmp_path, smollm2_path, family, keys):
    path = write_tiny_moe(tmp_path / "m.gguf", family, tokenizer_from=smollm2_path, seed=5, extra_metadata=keys)
    plain = write_tiny_moe(tmp_path / "plain.gguf", family, tokenizer_from=smollm2_path, seed=5)
    ids = np.random.default_rng(1).integers(0, 49152, 8)
    want = ReferenceMoE(path).logits(ids)
    got = _forward(_model(path), ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(_forward(_model(plain), ids) - got).max() > 1e-2  # the keys changed the result


def _rewrite(src: Path, dst: Path, drop: set[str] = frozenset(), set_kv: dict | None = None, rename=None) -> Path:
    """A copy of a GGUF file with metadata keys dropped or changed, or tensors renamed."""
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop or key in (set_kv or {}):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        w.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for key, value in (set_kv or {}).items():
        w.add_uint32(key, value)
    for t in r.tensors:
        name = rename(t.name) if rename else t.name
        w.add_tensor(name, np.asarray(t.data), raw_shape=None, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def small_mixtral(tmp_path_factory, smollm2_path):
    d = tmp_path_factory.mktemp("errors")
    return write_tiny_moe(d / "m.gguf", "mixtral", tokenizer_from=smollm2_path, n_layer=1, seed=1)


def test_missing_expert_used_count(tmp_path, small_mixtral):
    bad = _rewrite(small_mixtral, tmp_path / "bad.gguf", drop={"llama.expert_used_count"})
    with pytest.raises(GGUFError, match="expert_used_count"):
        _model(bad)


def test_more_experts_used_than_there_are(tmp_path, small_mixtral):
    bad = _rewrite(small_mixtral, tmp_path / "bad.gguf", set_kv={"llama.expert_used_count": 9})
    with pytest.raises(GGUFError, match=r"expert_used_count is 9.*1\.\.llama\.expert_count \(8\)"):
        _model(bad)


def test_unknown_gating_function(tmp_path, small_mixtral):
    bad = _rewrite(small_mixtral, tmp_path / "bad.gguf", set_kv={"llama.expert_gating_func": 3})
    with pytest.raises(UnsupportedArchitectureError, match="gating function 3"):
        _model(bad)


def test_moe_family_without_experts_is_an_error(tmp_path, smollm2_path):
    path = write_tiny_moe(tmp_path / "q.gguf", "qwen3moe", tokenizer_from=smollm2_path, n_layer=1)
    bad = _rewrite(path, tmp_path / "bad.gguf", drop={"qwen3moe.expert_count"})
    with pytest.raises(GGUFError, match="qwen3moe.expert_count"):
        _model(bad)


def test_expert_tensor_of_the_wrong_shape(tmp_path, smollm2_path):
    path = write_tiny_moe(tmp_path / "m.gguf", "mixtral", tokenizer_from=smollm2_path, n_layer=1)
    bad = _rewrite(path, tmp_path / "bad.gguf", set_kv={"llama.expert_count": 4, "llama.expert_used_count": 2})
    with pytest.raises(GGUFError, match="ffn_gate_inp.weight"):
        _model(bad)


def test_per_expert_tensors_are_explained(tmp_path, small_mixtral):
    """Early Mixtral conversions stored blk.N.ffn_gate.E.weight per expert: a clear error, not a KeyError."""
    bad = _rewrite(small_mixtral, tmp_path / "bad.gguf", rename=lambda n: n.replace("ffn_gate_exps", "ffn_gate.0"))
    with pytest.raises(GGUFError, match="each expert as its own tensor"):
        _model(bad)


# -- what a forward pass reads --------------------------------------------------------------------------


def _mapping_rss(path: Path) -> int:
    """Bytes of `path`'s mappings resident in this process (Linux /proc/self/smaps)."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(target)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"), reason="reads /proc/self/smaps"
)
def test_unchosen_experts_are_never_paged_in(tmp_path, smollm2_path):
    """A model whose router prefers a few of its 16 large experts: after prompts and decoding, the file's
    resident bytes are about the chosen experts' and the other weights', far below the file's size."""
    path = write_tiny_moe(
        tmp_path / "big.gguf", "qwen3moe", T.F16, tokenizer_from=smollm2_path,
        n_embd=256, n_head=4, n_head_kv=2, n_layer=2, n_expert=16, n_expert_used=2, n_ff_exp=1024, seed=2,
    )  # fmt: skip
    # start from a file the OS has not cached, and ask it not to read ahead around what a page fault
    # asks for (read_ahead_kb is often several MB, more than an expert here): then what is resident is
    # what the forward passes read
    import mmap

    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    f = GGUFFile(path)
    f._mmap.madvise(mmap.MADV_RANDOM)
    model = build_model(f, _backend("numba"))
    rss0 = _mapping_rss(path)
    ids = np.random.default_rng(0).integers(0, 49152, 6).astype(np.int32)
    cache = KVCache.for_model(model, 64)
    model.forward(ids, cache)
    for t in ids[:3]:
        model.forward(np.array([t], np.int32), cache)
    rss = _mapping_rss(path)
    expert_bytes = {
        name: t.n_bytes // 16 for name, t in f.tensors.items() if name.endswith("_exps.weight")
    }  # one expert's slice of each stacked tensor
    chosen = sum((layer.counts > 0).sum() for layer in model.moe_layers())
    n_pairs = 16 * len(model.moe_layers())
    # every other weight is read whole, but for the token embedding's few rows
    other = sum(t.n_bytes for name, t in f.tensors.items() if not name.endswith("_exps.weight") and name != "token_embd.weight")
    per_expert = 3 * next(iter(expert_bytes.values()))
    assert chosen < n_pairs  # some experts were never chosen
    slack = 1 << 20  # pages shared at the edges of what was read
    assert rss - rss0 <= other + chosen * per_expert + slack
    assert rss <= path.stat().st_size - (n_pairs - chosen) * per_expert + slack


# -- expert counts in the command line -------------------------------------------------------------------


def test_run_verbose_prints_expert_counts(moe_files, capsys):
    paths, _ = moe_files
    rc = cli.main(["run", str(paths["qwen3moe_q8_0"]), "The lighthouse", "--raw", "-n", "4", "--temp", "0", "--verbose"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "experts chosen: 2 MoE layers x 8 experts" in err
    assert re.search(r"layer 0: e\d+ +\d+%", err) and re.search(r"layer 1: e\d+ +\d+%", err)


def test_bench_reports_expert_counts(moe_files, capsys):
    paths, _ = moe_files
    assert cli.main(["bench", str(paths["mixtral_q8_0"]), "-p", "8", "-n", "3", "-r", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    pp, tg = np.array(r["expert_counts"]["pp"]), np.array(r["expert_counts"]["tg"])
    assert pp.shape == tg.shape == (2, 8)
    assert (pp.sum(1) == 2 * 8 * 2).all()  # 2 runs x 8 tokens x 2 experts, per layer
    assert (tg.sum(1) == 2 * (1 + 3) * 2).all()  # 2 runs x (1 token of context + 3 decoded) x 2 experts
    assert r["model_params_active"] < r["model_params"]
    assert cli.main(["bench", str(paths["mixtral_q8_0"]), "-p", "4", "-n", "2", "-r", "1"]) == 0
    out = capsys.readouterr().out
    assert "active)" in out and "experts chosen in pp4" in out and "experts chosen in tg2" in out


# -- several sequences in one pass (continuous batching) ---------------------------------------------------


@pytest.mark.parametrize("name", ["mixtral_q4_0", "qwen2moe_q8_0", "qwen3moe_q8_0", "olmoe_q8_0"])
def test_forward_many_equals_each_alone(name, moe_files):
    """A batch of sequences routes every token as it routes alone, and gives it the same bits (the
    expert matmuls see rows of several sequences; each row is computed the same way)."""
    paths, _ = moe_files
    model = _model(paths[name], FAST_BACKENDS[-1])
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, model.n_vocab, n).astype(np.int32) for n in (7, 1, 20)]
    alone = [model.forward(s, KVCache.for_model(model, 64), all_logits=False) for s in seqs]
    together = model.forward_many(seqs, [KVCache.for_model(model, 64) for _ in seqs])
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)
