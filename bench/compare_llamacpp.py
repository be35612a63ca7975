"""Prompt and generation speed of edgeinfer against llama.cpp, same run, same machine, alternating.

    python bench/compare_llamacpp.py --llama-python /work/llamaenv/bin/python \\
        [--models smollm2-135m gemma3-270m] [--shapes llama-3.2-1b:q4_k_m ...] [--threads 1 2] \\
        [--backends auto numba] [-p 512] [-n 128] [-r 2] [--rounds 3] [--json results.json]

Both sides use llama-bench's method: pp = one batch of P random token ids into an empty KV cache; tg =
N tokens decoded one at a time after one token of context; one untimed warm-up of each, then -r timed
runs, the median of which is a round's figure. edgeinfer runs as `python -m edgeinfer bench --json`
(a subprocess); llama.cpp runs through llama-cpp-python in the interpreter given by --llama-python
(a separate environment: llama-cpp-python is never a dependency of edgeinfer), driven by the small
script LLAMA_DRIVER below. For every model, thread count and backend the two sides take turns,
--rounds times, so drifts in machine speed hit both alike. The table gives each side's median and best
round, and the ratios edgeinfer / llama.cpp (above 1: edgeinfer faster).

--shapes MODEL:QUANT runs random-weight replicas of real models at the sizes people run
(bench/model_shapes.py: llama-3.2-1b, llama-3.2-3b, qwen3-1.7b in q4_0, q4_k_m, q8_0; written once to
$EDGEINFER_HOME/replicas or ~/.cache/edgeinfer/replicas). Every row says which native instruction set
edgeinfer ran (the bench JSON's `isa`) and, for tg, the decode GB/s of both sides (bytes a decode step
reads x tokens/s: every layer weight and the output head, one row of the token embedding) against the
machine's read ceiling, measured per thread count before and after the runs, the better one kept
(bench/read_ceiling.py: a Numba prange float32 sum over --ceiling-gb GB; --ceiling-gb 0 skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

LLAMA_DRIVER = r"""
import json, random, statistics, sys, time
import llama_cpp
path, p, n, t, reps, seed = sys.argv[1], *map(int, sys.argv[2:7])
t_load = time.perf_counter()
llm = llama_cpp.Llama(model_path=path, n_ctx=p + n + 8, n_batch=p, n_threads=t, n_threads_batch=t,
                      verbose=False)
load_s = time.perf_counter() - t_load
rng = random.Random(seed)
n_vocab = llm.n_vocab()
pp_tokens = [rng.randrange(n_vocab) for _ in range(p)]
tg_tokens = [rng.randrange(n_vocab) for _ in range(n + 1)]

def pp():
    llm.reset()  # n_tokens = 0: eval() clears the cache from there
    start = time.perf_counter()
    llm.eval(pp_tokens)
    return time.perf_counter() - start

def tg():
    llm.reset()
    llm.eval(tg_tokens[:1])  # one token of context, untimed
    start = time.perf_counter()
    for tok in tg_tokens[1:]:
        llm.eval([tok])
    return time.perf_counter() - start

pp(); tg()  # warm-up
pp_s = [pp() for _ in range(reps)]
tg_s = [tg() for _ in range(reps)]
sysinfo = getattr(llama_cpp, "llama_print_system_info", None)
sysinfo = sysinfo().decode() if sysinfo else ""
print(json.dumps({
    "system_info": sysinfo,
    "pp_tps": statistics.median(p / s for s in pp_s), "tg_tps": statistics.median(n / s for s in tg_s),
    "pp_tps_all": [p / s for s in pp_s], "tg_tps_all": [n / s for s in tg_s], "load_s": load_s,
    "llama_cpp_python": llama_cpp.__version__, "n_vocab": n_vocab,
}))
"""


class BenchFailed(RuntimeError):
    pass


def load_note(cores: int) -> str:
    """The 1-minute load average, with a warning when other work competes for the cores."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load average unknown"
    note = f"load average {load:.2f} on {cores} cores"
    if load > 0.5:
        note += ": other processes are running, figures are less reliable (both sides suffer, alternating)"
    return note


def _run_json(cmd: list[str], what: str, timeout: float) -> dict:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"{what} took longer than {timeout:.0f} s") from None
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        raise BenchFailed(f"{what} failed (exit {out.returncode}):\n{tail}")
    lines = [line for line in out.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise BenchFailed(f"{what} printed no JSON:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_edgeinfer(path: str, p: int, n: int, reps: int, threads: int, backend: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "edgeinfer", "bench", path, "-p", str(p), "-n", str(n), "-r", str(reps),
           "-t", str(threads), "--backend", backend, "--json"]  # fmt: skip
    return _run_json(cmd, f"edgeinfer bench ({backend}, {threads} threads)", timeout)


def run_llama(python: str, path: str, p: int, n: int, reps: int, threads: int, seed: int, timeout: float) -> dict:
    cmd = [python, "-c", LLAMA_DRIVER, path, str(p), str(n), str(threads), str(reps), str(seed)]
    return _run_json(cmd, f"llama.cpp ({threads} threads)", timeout)


def llama_version(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"compare_llamacpp: cannot run {python}: {e}") from None
    if out.returncode != 0:
        raise SystemExit(f"compare_llamacpp: {python} has no llama_cpp (pip install llama-cpp-python there):\n"
                         f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}")  # fmt: skip
    return out.stdout.strip()


def summarize(ours: list[float], theirs: list[float]) -> dict:
    med_o, med_t = statistics.median(ours), statistics.median(theirs)
    best_o, best_t = max(ours), max(theirs)
    return {
        "edgeinfer_median": med_o, "edgeinfer_best": best_o, "edgeinfer_rounds": ours,
        "llamacpp_median": med_t, "llamacpp_best": best_t, "llamacpp_rounds": theirs,
        "ratio_median": med_o / med_t if med_t else None, "ratio_best": best_o / best_t if best_t else None,
    }  # fmt: skip


def llama_isa(system_info: str) -> str:
    """The instruction sets llama.cpp's CPU backend was built with, from llama_print_system_info()."""
    on = [f.split("=")[0].strip() for f in system_info.split("|") if f.strip().endswith("= 1")]
    isa = [f for f in on if f.startswith(("AVX", "F16C", "FMA", "NEON", "ARM_", "SVE", "DOTPROD", "MATMUL", "AMX"))]
    return " ".join(isa) or "?"


def decode_gbs(tg_tps: float | None, bytes_per_token: int | None) -> float | None:
    """Decode read rate, GB/s: bytes a decode step reads x tokens/s."""
    if not tg_tps or not bytes_per_token:
        return None
    return tg_tps * bytes_per_token / 1e9


def _gbs_cell(gbs: float | None, ceiling: float | None) -> str:
    if gbs is None:
        return ""
    return f"{gbs:.1f} ({100 * gbs / ceiling:.0f}%)" if ceiling else f"{gbs:.1f}"


def format_table(rows: list[dict]) -> str:
    head = ["model", "backend", "isa", "threads", "test", "edgeinfer t/s", "llama.cpp t/s", "ratio (median)",
            "ratio (best)", "edgeinfer GB/s", "llama.cpp GB/s"]  # fmt: skip
    body = []
    for r in rows:
        s = r["summary"]
        g = r.get("decode") or {}
        body.append([
            r["model"], r["backend"], r.get("isa") or "-", str(r["threads"]), r["test"],
            f"{s['edgeinfer_median']:.2f} (best {s['edgeinfer_best']:.2f})",
            f"{s['llamacpp_median']:.2f} (best {s['llamacpp_best']:.2f})",
            f"{s['ratio_median']:.3f}" if s["ratio_median"] else "n/a",
            f"{s['ratio_best']:.3f}" if s["ratio_best"] else "n/a",
            _gbs_cell(g.get("edgeinfer_gb_s"), g.get("ceiling_gb_s")),
            _gbs_cell(g.get("llamacpp_gb_s"), g.get("ceiling_gb_s")),
        ])  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = {3, 5, 6, 7, 8, 9, 10}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="an interpreter with llama-cpp-python installed")
    ap.add_argument("--models", nargs="+", default=None,
                    help="paths or registry names (default: smollm2-135m gemma3-270m, unless --shapes is given)")
    ap.add_argument("--shapes", nargs="+", default=[], metavar="MODEL:QUANT",
                    help="random-weight replicas of real shapes (bench/model_shapes.py), e.g. llama-3.2-1b:q4_k_m; "
                         "'list' prints them")
    ap.add_argument("--ceiling-gb", type=float, default=1.0,
                    help="GB summed to measure the read ceiling (bench/read_ceiling.py); 0: do not measure")
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="thread counts (default: the available cores)")
    ap.add_argument("--backends", nargs="+", default=["auto"], help="edgeinfer backends (auto, native, numba, ...)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=2, help="timed runs per side per round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of edgeinfer and llama.cpp")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one side's run may take")
    ap.add_argument("--json", metavar="PATH", help="also save every figure as JSON here")
    args = ap.parse_args(argv)
    for name in ("n_prompt", "n_gen", "repetitions", "rounds"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    import model_shapes

    if args.shapes == ["list"]:
        print("\n".join(model_shapes.shape_names()))
        return 0
    for shape in args.shapes:
        try:
            model_shapes.parse_shape(shape)
        except ValueError as e:
            ap.error(str(e))
    if args.models is None:
        args.models = [] if args.shapes else ["smollm2-135m", "gemma3-270m"]

    from edgeinfer import __version__
    from edgeinfer.bench import git_commit, machine_info
    from edgeinfer.models import resolve_model
    from edgeinfer.system import default_threads

    threads_list = args.threads or [default_threads()]
    if any(t <= 0 for t in threads_list):
        ap.error("--threads must be positive")
    llama_ver = llama_version(args.llama_python)
    machine = machine_info()
    commit = git_commit()
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores available ({machine['os']}, "
          f"Python {machine['python']})")  # fmt: skip
    print(f"edgeinfer {__version__} ({commit or 'no git checkout'}); llama-cpp-python {llama_ver} via {args.llama_python}")
    print(f"method: pp{args.n_prompt} and tg{args.n_gen}, warm-up + median of {args.repetitions} runs per side per "
          f"round, {args.rounds} rounds alternating")  # fmt: skip
    # the replicas first (minutes for a 3B file, once), so the timed part is all timing
    targets = [(model, None) for model in args.models]
    for shape in args.shapes:
        targets.append((shape, str(model_shapes.ensure_replica(shape, log=lambda m: print(m, file=sys.stderr, flush=True)))))
    ceilings: dict[int, dict] = {}

    def measure_ceilings(when: str) -> None:
        """The read ceiling per thread count, kept at its best over the measures (one before the runs and one
        after them: on a shared machine a single measure can land in a busy minute)."""
        if args.ceiling_gb <= 0:
            return
        from read_ceiling import measure_in_subprocess

        for threads in threads_list:
            c = measure_in_subprocess(threads, args.ceiling_gb)
            print(f"read ceiling {when}, {threads} threads: {c['gb_s']:.1f} GB/s (Numba prange float32 sum over "
                  f"{args.ceiling_gb:g} GB, best of {len(c['gb_s_all'])})")  # fmt: skip
            best = ceilings.get(threads)
            if best is None or c["gb_s"] > best["gb_s"]:
                c["measures_gb_s"] = (best or {}).get("measures_gb_s", []) + [c["gb_s"]]
                ceilings[threads] = c
            else:
                best["measures_gb_s"] = best.get("measures_gb_s", []) + [c["gb_s"]]

    measure_ceilings("before")
    load_start = load_note(machine["cores_available"])
    print(f"before: {load_start}\n", flush=True)

    rows, runs, failures = [], [], []
    started = time.perf_counter()
    llama_sysinfo = None
    for model, replica in targets:
        path = replica or str(resolve_model(model))
        label = model if replica else (Path(path).stem if model == path or "/" in model else model)
        try:
            read_bytes, file_bytes = model_shapes.file_decode_bytes(path)
        except Exception as e:  # noqa: BLE001 -- the figure is optional, the timing is not
            print(f"  {label}: cannot count its decode bytes ({e})", file=sys.stderr)
            read_bytes = file_bytes = None
        for threads in threads_list:
            for backend in args.backends:
                ours: dict[str, list[float]] = {"pp": [], "tg": []}
                theirs: dict[str, list[float]] = {"pp": [], "tg": []}
                used_backend, energy, isa = backend, None, None
                try:
                    for rnd in range(args.rounds):
                        # alternate who goes first, so neither side always runs on a warmer (or hotter) machine
                        order = ("edgeinfer", "llama.cpp") if rnd % 2 == 0 else ("llama.cpp", "edgeinfer")
                        for side in order:
                            if side == "edgeinfer":
                                r = run_edgeinfer(path, args.n_prompt, args.n_gen, args.repetitions, threads, backend, args.timeout)
                                used_backend = r["backend"] if r["backend"] == backend else f"{backend}->{r['backend']}"
                                energy = {"source": r["energy_source"], "tokens_per_joule": r["tokens_per_joule"]}
                                isa = r.get("isa")
                                dest = ours
                            else:
                                r = run_llama(args.llama_python, path, args.n_prompt, args.n_gen, args.repetitions, threads, args.seed, args.timeout)
                                llama_sysinfo = r.get("system_info") or llama_sysinfo
                                dest = theirs
                            dest["pp"].append(r["pp_tps"])
                            dest["tg"].append(r["tg_tps"])
                            runs.append({"model": label, "threads": threads, "backend": backend, "round": rnd, "side": side,
                                         "loadavg_1m": os.getloadavg()[0], "result": r})  # fmt: skip
                            print(f"  {label} {backend} t={threads} round {rnd + 1}/{args.rounds} {side:9s}: "
                                  f"pp{args.n_prompt} {r['pp_tps']:8.2f} t/s  tg{args.n_gen} {r['tg_tps']:7.2f} t/s",
                                  file=sys.stderr, flush=True)  # fmt: skip
                except BenchFailed as e:
                    failures.append(f"{label} {backend} t={threads}: {e}")
                    print(f"  {failures[-1]}", file=sys.stderr, flush=True)
                    continue
                for test, n in (("pp", args.n_prompt), ("tg", args.n_gen)):
                    summary = summarize(ours[test], theirs[test])
                    decode = None
                    if test == "tg" and read_bytes:
                        decode = {  # the ceiling's share is filled in after the runs (the ceiling's last measure)
                            "bytes_per_token": read_bytes, "file_tensor_bytes": file_bytes, "ceiling_gb_s": None,
                            "edgeinfer_gb_s": decode_gbs(summary["edgeinfer_median"], read_bytes),
                            "llamacpp_gb_s": decode_gbs(summary["llamacpp_median"], read_bytes),
                        }  # fmt: skip
                    rows.append({
                        "model": label, "path": path, "backend": used_backend, "isa": isa, "threads": threads,
                        "test": f"{test}{n}", "summary": summary, "edgeinfer_energy": energy, "decode": decode,
                    })  # fmt: skip

    if rows:
        measure_ceilings("after")
        for row in rows:
            decode, ceiling = row["decode"], ceilings.get(row["threads"], {}).get("gb_s")
            if decode and ceiling:
                decode["ceiling_gb_s"] = ceiling
                decode["edgeinfer_of_ceiling"] = decode["edgeinfer_gb_s"] / ceiling
                decode["llamacpp_of_ceiling"] = decode["llamacpp_gb_s"] / ceiling
        print(format_table(rows))
        print("\nt/s: median of the rounds (best round in brackets); ratio = edgeinfer / llama.cpp, above 1 means edgeinfer is faster")
        ceiling_note = ", ".join(f"{c['gb_s']:.1f} GB/s at {t} threads (best of before/after)" for t, c in ceilings.items())
        print("isa: the native kernels' instruction set edgeinfer ran; GB/s (tg rows): bytes a decode step reads x "
              "median t/s" + (f", in brackets the share of the read ceiling ({ceiling_note})" if ceilings else ""))
        if llama_sysinfo:
            print(f"llama.cpp's CPU backend: {llama_isa(llama_sysinfo)}")
    for f in failures:
        print(f"FAILED: {f}")
    load_end = load_note(machine["cores_available"])
    print(f"after: {load_end}; total time {time.perf_counter() - started:.0f} s")
    if args.json:
        report = {
            "machine": machine, "edgeinfer_version": __version__, "commit": commit,
            "llama_cpp_python": llama_ver, "n_prompt": args.n_prompt, "n_gen": args.n_gen,
            "repetitions": args.repetitions, "rounds": args.rounds, "load_before": load_start, "load_after": load_end,
            "read_ceiling": {str(t): c for t, c in ceilings.items()}, "llama_system_info": llama_sysinfo,
            "rows": rows, "runs": runs, "failures": failures,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"saved {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
