"""`edgeinfer bench`: run_bench on a tiny model written here, the CLI's JSON, argument errors, threads."""

from __future__ import annotations

import json

import pytest
from gguf import GGMLQuantizationType as T
from reference_model import write_tiny_model

from edgeinfer import cli, system
from edgeinfer.energy import EstimateMeter
from edgeinfer import bench
from edgeinfer.bench import bench_context, bench_model, format_table, run_bench
from edgeinfer.errors import EdgeInferError

REQUIRED = (
    "model", "model_path", "threads", "backend", "pp", "tg", "pp_tps", "tg_tps", "pp_tps_all", "tg_tps_all",
    "energy_source", "energy_note", "tokens_per_joule", "pp_joules", "tg_joules", "machine",
    "edgeinfer_version", "commit",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("bench") / "tiny.gguf", "llama", T.Q8_0, vocab=True)


@pytest.fixture(autouse=True)
def no_rapl(monkeypatch, tmp_path):  # the estimate everywhere, whatever the test machine has
    from edgeinfer.energy import rapl

    monkeypatch.setattr(rapl, "POWERCAP_ROOT", str(tmp_path / "no-powercap"))


def check_result(r: dict, n_prompt: int, n_gen: int, reps: int) -> None:
    for key in REQUIRED:
        assert key in r, key
    assert r["pp"] == n_prompt and r["tg"] == n_gen and r["repetitions"] == reps
    assert len(r["pp_tps_all"]) == len(r["tg_tps_all"]) == len(r["pp_joules_all"]) == len(r["tg_joules_all"]) == reps
    assert min(r["pp_tps_all"]) <= r["pp_tps"] <= max(r["pp_tps_all"])
    assert min(r["tg_tps_all"]) <= r["tg_tps"] <= max(r["tg_tps_all"])
    assert r["pp_tps_min"] == min(r["pp_tps_all"]) and r["tg_tps_max"] == max(r["tg_tps_all"])
    for s, tps, n in zip(r["pp_seconds_all"], r["pp_tps_all"], [n_prompt] * reps):
        assert tps == pytest.approx(n / s)
    assert r["tokens_per_joule"]["pp"] == pytest.approx(n_prompt / r["pp_joules"])
    assert r["tokens_per_joule"]["tg"] == pytest.approx(n_gen / r["tg_joules"])
    assert r["energy_source"] == "estimate" and "W per busy core assumed" in r["energy_note"]
    assert r["machine"]["cpu"] and r["machine"]["cores_available"] >= 1
    assert r["commit"] is None or isinstance(r["commit"], str)


def test_run_bench_tiny(tiny):
    r = run_bench(tiny, n_prompt=8, n_gen=4, repetitions=2, n_threads=1, backend="numba")
    check_result(r, 8, 4, 2)
    assert r["model_path"] == str(tiny) and r["backend"] == "numba" and r["threads"] == 1
    assert r["n_ctx"] == 12 and r["model_params"] > 0 and r["model_type"].startswith("llama")
    json.dumps(r)  # all plain JSON
    table = format_table(r)
    assert "pp8" in table and "tg4" in table and "estimate" in table


def test_reference_backend_and_context(tiny):
    r = run_bench(tiny, n_prompt=4, n_gen=6, repetitions=1, backend="reference", n_ctx=7)
    check_result(r, 4, 6, 1)
    assert r["backend"] == "reference" and r["n_ctx"] == 7


def test_auto_backend_always_resolves(tiny):
    r = run_bench(tiny, n_prompt=2, n_gen=2, repetitions=1, backend="auto")
    assert r["backend"] and r["backend_requested"] == "auto"


def test_tokens_per_joule_from_meter(tiny):
    class Fixed(EstimateMeter):  # 2 J per measured block, whatever happens
        def _stop(self, state):
            return 2.0

    from edgeinfer.api import load

    llm = load(tiny, n_ctx=64)
    r = bench_model(llm.model, n_prompt=6, n_gen=3, repetitions=3, meter=Fixed())
    assert r["pp_joules"] == r["tg_joules"] == 2.0
    assert r["tokens_per_joule"] == {"pp": 3.0, "tg": 1.5}
    r2 = run_bench(llm, n_prompt=6, n_gen=3, repetitions=1)  # an LLM already loaded works too
    assert r2["threads"] == llm.n_threads and r2["model_path"] == str(tiny)


def test_same_tokens_each_run(tiny, monkeypatch):
    seen = []
    from edgeinfer.api import load

    llm = load(tiny, n_ctx=64)
    forward = llm.model.forward

    def spy(ids, cache, all_logits=False):
        seen.append((len(ids), cache.n_past, ids.tolist()))
        return forward(ids, cache, all_logits=all_logits)

    monkeypatch.setattr(llm.model, "forward", spy)
    bench_model(llm.model, n_prompt=5, n_gen=3, repetitions=2, meter=EstimateMeter())
    pp = [s for s in seen if s[0] == 5]
    assert len(pp) == 3 and all(s == pp[0] for s in pp) and pp[0][1] == 0  # warm-up + 2, fresh cache each
    tg_positions = [s[1] for s in seen if s[0] == 1]
    assert tg_positions == [0, 1, 2, 3] * 3  # one token of context, then 3 decoded one at a time


def test_cli_json(tiny, capsys):
    rc = cli.main(["bench", str(tiny), "-p", "8", "-n", "3", "-r", "2", "-t", "1", "--json", "--backend", "numba"])
    out, err = capsys.readouterr()
    assert rc == 0
    r = json.loads(out)  # exactly one JSON object on stdout
    check_result(r, 8, 3, 2)
    assert r["threads"] == 1 and "warm-up" in err
    assert r["kv_type"] == "f16" and r["kv_bytes_per_token"] == 2 * 2 * (16 + 16) * 2  # layers, KV heads, K+V, bytes
    assert cli.main(["bench", str(tiny), "-p", "4", "-n", "2", "-r", "1", "-t", "1", "--json", "--kv-type", "f32"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kv_type"] == "f32" and r["kv_bytes_per_token"] == 2 * 2 * (16 + 16) * 4


def test_cli_table(tiny, capsys):
    assert cli.main(["bench", str(tiny), "-p", "4", "-n", "2", "-r", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model") and "pp4" in out and "tg2" in out and "tok/J" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["-p", "0"], "prompt length"),
        (["-n", "-1"], "generated tokens"),
        (["-r", "0"], "repetitions"),
        (["-t", "0"], "threads"),
        (["-p", "16", "-n", "8", "-c", "8"], "too small"),
        (["-p", "4", "-n", "8", "-c", "8"], "too small"),
        (["--energy", "rapl"], "RAPL"),
    ],
)
def test_cli_argument_errors(tiny, capsys, args, match):
    assert cli.main(["bench", str(tiny), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeinfer: error:") and match in err and len(err.strip().splitlines()) == 1


def test_cli_bad_model(tmp_path, capsys):
    assert cli.main(["bench", str(tmp_path / "missing.gguf"), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("edgeinfer: error: No such model file")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 4)
    assert cli.main(["bench", str(bad)]) == 1
    assert "edgeinfer: error:" in capsys.readouterr().err


def test_cli_unknown_backend_is_a_usage_error(tiny, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", str(tiny), "--backend", "fortran"])


def test_unavailable_backend_is_clear(monkeypatch):
    import edgeinfer.kernels as kernels

    def only_numba(name="numba", n_threads=None):
        if name != "numba":
            raise ValueError(f"Unknown backend {name!r}")
        return "numba-backend"

    monkeypatch.setattr(kernels, "get_backend", only_numba)
    assert bench.resolve_backend("auto", 2) == "numba-backend"  # "auto" falls back to the default
    with pytest.raises(EdgeInferError, match="'native' is not available"):
        bench.resolve_backend("native", 2)


def test_bench_context():
    assert bench_context(512, 128) == 640
    assert bench_context(4, 8) == 12
    assert bench_context(4, 8, 9) == 9
    with pytest.raises(EdgeInferError, match="-c 9"):
        bench_context(4, 8, 8)


def test_cli_run_passes_backend(monkeypatch, capsys):
    import edgeinfer.api

    seen = {}

    def fake_load(model, **kw):
        seen.update(kw)
        raise EdgeInferError("stop here")

    monkeypatch.setattr(edgeinfer.api, "load", fake_load)
    assert cli.main(["run", "m.gguf", "hi", "--backend", "reference", "-t", "1"]) == 1
    assert seen["n_threads"] == 1 and getattr(seen["backend"], "name", None) == "reference"
    seen.clear()
    assert cli.main(["run", "m.gguf", "hi"]) == 1
    assert "backend" not in seen and seen["n_threads"] is None  # load's own defaults
    assert seen["kv_type"] == "f16"
    assert cli.main(["run", "m.gguf", "hi", "--kv-type", "q8_0"]) == 1 and seen["kv_type"] == "q8_0"


# -- threads: the default comes from the machine (affinity, cgroup quota); -t overrides it ------------


def fake_open(files: dict):
    real = open

    def opener(path, *a, **k):
        if str(path) in files:
            import io

            if files[str(path)] is None:
                raise FileNotFoundError(path)
            return io.StringIO(files[str(path)])
        return real(path, *a, **k)

    return opener


@pytest.mark.parametrize(
    "cpu_max, expected",
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("400000 100000\n", 4.0), ("50000 100000\n", 0.5)],
)
def test_cgroup_v2_cpu_max(monkeypatch, cpu_max, expected):
    monkeypatch.setattr(system, "open", fake_open({"/sys/fs/cgroup/cpu.max": cpu_max}), raising=False)
    assert system._cgroup_cpu_limit() == expected


def test_cgroup_v1_quota(monkeypatch):
    files = {
        "/sys/fs/cgroup/cpu.max": None,
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    }
    monkeypatch.setattr(system, "open", fake_open(files), raising=False)
    assert system._cgroup_cpu_limit() == 2.0
    files["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"] = "-1\n"
    assert system._cgroup_cpu_limit() is None


def test_default_threads_follow_quota_and_env(monkeypatch):
    monkeypatch.delenv("EDGEINFER_THREADS", raising=False)
    monkeypatch.setattr(system.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(system, "_cgroup_cpu_limit", lambda: 2.5)
    assert system.default_threads() == 2  # 8 cores in the mask, 2.5 CPUs of quota
    monkeypatch.setattr(system, "_cgroup_cpu_limit", lambda: 0.5)
    assert system.default_threads() == 1
    monkeypatch.setattr(system, "_cgroup_cpu_limit", lambda: None)
    assert system.default_threads() == 8
    monkeypatch.setenv("EDGEINFER_THREADS", "3")
    assert system.default_threads() == 3


def test_bench_threads_default_and_override(tiny, monkeypatch):
    monkeypatch.setattr(system, "default_threads", lambda: 1)
    r = run_bench(tiny, n_prompt=2, n_gen=2, repetitions=1, backend="numba")
    assert r["threads"] == 1  # the machine's default when -t is not given
    r = run_bench(tiny, n_prompt=2, n_gen=2, repetitions=1, backend="numba", n_threads=2)
    assert r["threads"] == 2


# -- bench/compare_llamacpp.py, end to end, with a stand-in for llama-cpp-python --------------------

FAKE_LLAMA_CPP = '''
import time
__version__ = "0.0.fake"

class Llama:
    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, verbose):
        assert n_ctx >= n_batch and n_threads == n_threads_batch
        self.n_ctx, self.n_past = n_ctx, 0

    def n_vocab(self):
        return 256

    def reset(self):
        self.n_past = 0

    def eval(self, tokens):
        assert self.n_past + len(tokens) <= self.n_ctx
        self.n_past += len(tokens)
        time.sleep(0.001 * len(tokens))
'''


def test_compare_llamacpp_end_to_end(tiny, tmp_path, capsys):
    import importlib.util
    import os
    import stat
    import sys
    from pathlib import Path

    fake = tmp_path / "fake"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text(FAKE_LLAMA_CPP)
    python = tmp_path / "llama-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{fake}" exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)

    script = Path(__file__).resolve().parent.parent / "bench" / "compare_llamacpp.py"
    spec = importlib.util.spec_from_file_location("compare_llamacpp", script)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    out_json = tmp_path / "cmp.json"
    rc = compare.main(["--llama-python", str(python), "--models", str(tiny), "--threads", "1", "--backends", "numba",
                       "--rounds", "2", "-r", "1", "-p", "8", "-n", "4", "--ceiling-gb", "0.02", "--json", str(out_json)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "llama-cpp-python 0.0.fake" in out and "pp8" in out and "tg4" in out and "ratio" in out
    report = json.loads(out_json.read_text())
    assert report["llama_cpp_python"] == "0.0.fake" and len(report["runs"]) == 4 and not report["failures"]
    sides = [r["side"] for r in report["runs"]]
    assert sides == ["edgeinfer", "llama.cpp", "llama.cpp", "edgeinfer"]  # alternating, first mover swapped
    pp = next(r for r in report["rows"] if r["test"] == "pp8")["summary"]
    assert pp["ratio_median"] == pytest.approx(pp["edgeinfer_median"] / pp["llamacpp_median"])
    # the read ceiling measured before and after the runs, the better kept, and the decode share taken of it
    ceiling = report["read_ceiling"]["1"]
    assert len(ceiling["measures_gb_s"]) == 2 and ceiling["gb_s"] == max(ceiling["measures_gb_s"])
    tg = next(r for r in report["rows"] if r["test"] == "tg4")["decode"]
    assert tg["ceiling_gb_s"] == ceiling["gb_s"]
    assert tg["edgeinfer_of_ceiling"] == pytest.approx(tg["edgeinfer_gb_s"] / ceiling["gb_s"])
    assert os.path.exists(out_json)
