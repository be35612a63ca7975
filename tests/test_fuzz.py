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


def test_tokenizing_pathological_text_is_linear(tmp_path, smollm2_gguf):
    """One character repeated, whitespace runs, long numbers, invalid UTF-8 turned text: time grows
    linearly (a 4x longer text takes well under 16x as long)."""
    import time

    from edgeinfer.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(smollm2_gguf)
    for unit in ("a", " ", "7", "\n", "é", "\ufffd", "ab 12\t"):
        times = []
        for n in (20_000, 80_000):
            text = unit * (n // len(unit))
            t = time.perf_counter()
            tok.encode(text, True, True)
            times.append(time.perf_counter() - t)
        assert times[1] < 10 * times[0] + 0.05, (unit, times)
