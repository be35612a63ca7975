"""The fuzz suite (issue 18): hostile model files through the GGUF reader, the tokenizer builder, the chat
template renderer, load() and one forward pass, each case in a child process (tests/fuzz/worker.py), so
a segfault, a hang or a runaway allocation is caught and reported, not fatal to the suite.

    python -m tests.fuzz --seconds 600            # the seed corpus, then random mutations for 10 minutes
    python -m tests.fuzz --seconds 60 --seed 7    # CI's bounded run (tests/test_fuzz.py)

Every case must end in success or a clean EdgeInferError with a sentence. Findings (a crash, a hang,
memory past the limit, any other exception) are written to --out (default fuzz-findings/) with the
file that caused them, and the run exits 1.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import handcrafted, mutate

ROOT = Path(__file__).resolve().parents[2]
CASE_SECONDS = 60.0  # a case that takes longer is a hang (a fresh worker's first case gets 4x: imports, kernels;
# a case can still be the first of its tensor type to compile, which took ~30 s on a loaded 2-core CI machine)
MEMORY_LIMIT = 3 << 30  # resident memory of the worker beyond which a case is an unbounded allocation


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)  # ok / clean / bad / crash / hang / memory
    stages: Counter = field(default_factory=Counter)  # "stage:outcome"
    findings: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))]
        lines.append("by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(self.stages.items())))
        for f in self.findings[:20]:
            lines.append(f"FINDING {f['kind']} {f['name']}: {f.get('detail', '')[:300]}")
        return "\n".join(lines)


class Worker:
    def __init__(self, forward: bool):
        self.forward = forward
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   EDGEINFER_THREADS=os.environ.get("EDGEINFER_THREADS", "1"))  # fmt: skip
        args = [sys.executable, "-m", "tests.fuzz.worker"] + ([] if self.forward else ["--no-forward"])
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def _rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def run(self, path: str, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(path + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.stop()
            return {"outcome": "crash", "detail": "the worker died before the case"}
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
                code = self.proc.wait()
                self.proc = None
                sig = -code if code < 0 else None
                name = signal.Signals(sig).name if sig else f"exit {code}"
                return {"outcome": "crash", "detail": f"the worker died: {name}"}
            if self._rss() > MEMORY_LIMIT:
                self.stop()
                return {"outcome": "memory", "detail": f"the worker grew past {MEMORY_LIMIT >> 20} MiB"}
            if time.monotonic() > deadline:
                self.stop()
                return {"outcome": "hang", "detail": f"no answer in {timeout:g} s"}


def run(seconds: float = 60.0, seed: int = 0, forward: bool = True, out: Path | None = None,
        corpus: bool = True, log=print) -> Report:  # fmt: skip
    """The seed corpus (when `corpus`), then seeded random mutations until `seconds` have passed."""
    rng = random.Random(seed)
    report = Report()
    worker = Worker(forward)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="edgeinfer-fuzz-"))
    cases = iter(handcrafted()) if corpus else iter(())
    n_mut = 0
    try:
        while True:
            case = next(cases, None)
            if case is None:
                if time.monotonic() - t0 > seconds:
                    break
                kind, data = mutate(rng)
                n_mut += 1
                case = (f"{kind}-{seed}-{n_mut}", data)
            name, data = case
            path = tmp / "case.gguf"
            path.write_bytes(data)
            # a fresh worker's first case pays for imports and kernel compilation (so does one after a crash)
            res = worker.run(str(path), CASE_SECONDS * (4 if worker.proc is None else 1))
            report.cases += 1
            report.outcomes[res["outcome"]] += 1
            for st, oc in res.get("stages", {}).items():
                report.stages[f"{st}:{oc}"] += 1
            if res["outcome"] not in ("ok", "clean"):
                finding = {"kind": res["outcome"], "name": name, "detail": res.get("detail", "")}
                report.findings.append(finding)
                log(f"FINDING {finding['kind']} {name}: {finding['detail'][:300]}")
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{len(report.findings):04d}-{name}.gguf").write_bytes(data)
                    (out / f"{len(report.findings):04d}-{name}.json").write_text(json.dumps(finding, indent=1))
            if report.cases % 200 == 0:
                log(f"... {report.cases} cases, {dict(report.outcomes)}")
    finally:
        worker.stop()
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        report.seconds = time.monotonic() - t0
    return report


__all__ = ["Report", "run"]
