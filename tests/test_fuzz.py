"""The fuzz suite's bounded CI run (issue 18): the handcrafted corpus and about 40 s of mutations, each
case in a child process. `python -m tests.fuzz --seconds 600` runs it for longer."""

from __future__ import annotations

import os

from tests.fuzz import run


def test_hostile_files_end_cleanly(tmp_path):
    seconds = float(os.environ.get("EDGEINFER_FUZZ_SECONDS", "40"))
    report = run(seconds=seconds, seed=int(os.environ.get("EDGEINFER_FUZZ_SEED", "0")), out=tmp_path, log=lambda *a: None)
    print(report.summary())
    assert report.cases > 100
    assert report.outcomes["ok"] > 0 and report.outcomes["clean"] > 0
    assert not report.findings, report.summary()
