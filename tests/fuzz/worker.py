"""The fuzz worker: a child process that runs each case the parent names and reports how it ended.

Reads one file path per line on stdin; for each, writes one JSON line on stdout:
{"outcome": "ok" | "clean" | "bad", "stages": {stage: outcome}, "detail": "..."}. Stages: the GGUF reader,
the tokenizer builder (and tokenizing hostile text), the chat template, load() and one forward pass.
A crash or hang kills only this process: the parent sees it and starts another.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from edgeinfer.errors import EdgeInferError  # noqa: E402

TEXTS = ["hello the world", "", "\x00\ud7ff\U0010ffff", " " * 300, "7" * 300, "<|im_start|>user<|im_end|>", "é" * 50]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def _stage(fn) -> tuple[str, str, object]:
    try:
        return "ok", "", fn()
    except EdgeInferError as e:
        msg = str(e)
        # a clean error is a sentence (not empty, not a bare repr)
        if len(msg) < 10:
            return "bad", f"{type(e).__name__} without a sentence: {msg!r}", None
        return "clean", f"{type(e).__name__}: {msg[:200]}", None
    except BaseException as e:  # noqa: BLE001 (the point: anything else is a finding)
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{tb[-1].filename.split('edgeinfer/')[-1]}:{tb[-1].lineno}" if tb else "?"
        return "bad", f"{type(e).__name__} at {where}: {str(e)[:200]}", None


def run_case(path: str, forward: bool = True) -> dict:
    from edgeinfer.gguf import GGUFFile

    stages: dict[str, str] = {}
    details: list[str] = []

    def note(name, res):
        stages[name] = res[0]
        if res[0] != "ok":
            details.append(f"{name}: {res[1]}")
        return res[2]

    f = note("reader", _stage(lambda: GGUFFile(path)))
    if f is not None:
        from edgeinfer.tokenizer import Tokenizer
        from edgeinfer.tokenizer.chat import ChatTemplate

        tok = note("tokenizer", _stage(lambda: Tokenizer.from_gguf(f)))
        if tok is not None:
            note("tokenize", _stage(lambda: [tok.encode(t, True, True) for t in TEXTS] and tok.decode(list(range(min(tok.n_vocab, 300))))))
        note("template", _stage(lambda: ChatTemplate.from_metadata(f.metadata).render(MESSAGES)))
        if forward:
            def load_and_run():
                import edgeinfer

                llm = edgeinfer.load(path, n_ctx=32)
                ids = llm.tokenize("hello the world")[:8] or [0]
                logits = llm.logits(ids)
                assert logits.shape[0] == len(ids)
                llm.generate(ids, max_tokens=2, temperature=0.0, logit_bias={llm.n_vocab - 1: 1.0}) if _has_bias() else None

            note("load_forward", _stage(load_and_run))
        f.close()
    worst = "bad" if "bad" in stages.values() else "clean" if "clean" in stages.values() else "ok"
    return {"outcome": worst, "stages": stages, "detail": "; ".join(details)[:600]}


def _has_bias() -> bool:
    import inspect

    import edgeinfer

    try:
        return "logit_bias" in inspect.signature(edgeinfer.LLM.generate).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def main() -> int:
    forward = "--no-forward" not in sys.argv
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing the code under test prints may corrupt the protocol
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        res = run_case(path, forward)
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
