"""The Numba backend against the native one, same run: pp and tg of `edgeinfer bench` on the 1B replicas,
each configuration in its own process, the configurations alternating within each round, optionally
beside busy loops (a loaded machine). Prints medians per configuration, the numba/native ratios per
round (the same-run yardstick), and CPU time per generated token (all of the process's threads: a
spinning OpenMP worker shows there), with the load average and CPU pressure (PSI) before each run.

    python bench/numba_vs_native.py                       # Q4_0, Q4_K_M, Q8_0; numba at its default spin
    python bench/numba_vs_native.py --spin default,1000,20000 --rounds 2 --load 2
    python bench/numba_vs_native.py --models q4_0 -p 128 -n 32 --json runs.json

--spin: numba configurations, by GOMP_SPINCOUNT ("default": the backend's own choice, nothing set);
--load N: N busy loops at nice 19 run through the whole measurement (a loaded machine on few cores).
Replicas: ~/.cache/edgeinfer/replicas (bench/make_replica.py makes them).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeinfer.system import cpu_pressure  # noqa: E402

REPLICAS = Path(os.environ.get("EDGEINFER_HOME", Path.home() / ".cache" / "edgeinfer")) / "replicas"


def replica(fmt: str) -> Path:
    found = sorted(REPLICAS.glob(f"llama-3.2-1b-{fmt}-*.gguf"))
    if not found:
        sys.exit(f"no 1B {fmt} replica in {REPLICAS}: make it with bench/make_replica.py")
    return found[0]


def run_one(model: Path, backend: str, spin: str | None, args) -> dict:
    """One `edgeinfer bench` process; its JSON plus the load average when it started."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    for key in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    if spin not in (None, "default"):
        env["GOMP_SPINCOUNT"] = spin
    cmd = [sys.executable, "-m", "edgeinfer", "bench", str(model), "-p", str(args.p), "-n", str(args.n),
           "-r", str(args.r), "-t", str(args.threads), "--backend", backend, "--json"]  # fmt: skip
    load, pressure = os.getloadavg()[0], cpu_pressure()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    result["load_at_start"], result["cpu_pressure_at_start"] = load, pressure
    return result


def busy_loops(n: int) -> list[subprocess.Popen]:
    loop = "while True: pass"
    return [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", loop]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="q4_0,q4_k_m,q8_0")
    ap.add_argument("--spin", default="default", help="numba configurations: GOMP_SPINCOUNT values or 'default'")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load", type=int, default=0, help="busy loops (nice 19) beside the runs")
    ap.add_argument("-p", type=int, default=256)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    configs = [("native", None)] + [("numba", s) for s in args.spin.split(",")]
    runs: list[dict] = []
    loops = busy_loops(args.load)
    try:
        time.sleep(1.0 if loops else 0.0)
        for rnd in range(args.rounds):
            for fmt in args.models.split(","):
                order = configs if rnd % 2 == 0 else configs[::-1]  # alternate who goes first
                for backend, spin in order:
                    r = run_one(replica(fmt), backend, spin, args)
                    tg_cpu = statistics.median(r["tg_cpu_seconds_all"]) / args.n * 1e3
                    psi = r["cpu_pressure_at_start"]
                    runs.append(dict(round=rnd, model=fmt, backend=backend, spin=spin, pp=r["pp_tps"], tg=r["tg_tps"],
                                     tg_cpu_ms=tg_cpu, load=r["load_at_start"], cpu_pressure=psi))  # fmt: skip
                    print(f"round {rnd} {fmt:7s} {backend:6s} spin={spin or '-':8s} pp {r['pp_tps']:7.1f} "
                          f"tg {r['tg_tps']:6.1f} t/s, tg CPU {tg_cpu:5.1f} ms/token, load {r['load_at_start']:.1f}, "
                          f"CPU pressure {'-' if psi is None else f'{100 * psi:.0f}%'}", flush=True)  # fmt: skip
    finally:
        for p in loops:
            p.kill()
    report(runs, configs, args)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


def report(runs: list[dict], configs, args) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    print(f"\ncommit {commit}, -p {args.p} -n {args.n} -r {args.r} -t {args.threads}, {args.load} busy loops, "
          f"{args.rounds} rounds; medians over rounds; ratios: numba / native of the same round, median")  # fmt: skip
    print("| 1B | config | pp t/s | tg t/s | tg CPU ms/token | pp ratio | tg ratio |\n|---|---|---|---|---|---|---|")
    for fmt in args.models.split(","):
        native = {r["round"]: r for r in runs if r["model"] == fmt and r["backend"] == "native"}
        for backend, spin in configs:
            mine = [r for r in runs if r["model"] == fmt and r["backend"] == backend and r["spin"] == spin]
            if not mine:
                continue
            med = {k: statistics.median(r[k] for r in mine) for k in ("pp", "tg", "tg_cpu_ms")}
            ratio = {k: statistics.median(r[k] / native[r["round"]][k] for r in mine) for k in ("pp", "tg")}
            name = "native" if backend == "native" else f"numba spin {spin}"
            print(f"| {fmt} | {name} | {med['pp']:.1f} | {med['tg']:.1f} | {med['tg_cpu_ms']:.1f} | "
                  f"{ratio['pp']:.2f}x | {ratio['tg']:.2f}x |")


if __name__ == "__main__":
    main()
