"""python -m tests.fuzz [--seconds N] [--seed S] [--no-forward] [--no-corpus] [--out DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description="Fuzz edgeinfer with hostile model files.")
    p.add_argument("--seconds", type=float, default=60.0, help="mutations run until this much time has passed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-forward", action="store_true", help="skip load() and the forward pass (faster)")
    p.add_argument("--no-corpus", action="store_true", help="skip the handcrafted seed corpus")
    p.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="where findings are saved")
    a = p.parse_args()
    report = run(a.seconds, a.seed, not a.no_forward, a.out, not a.no_corpus)
    print(report.summary())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
