"""llama.cpp's own tokenizer test corpus (test-tokenizer-0: models/ggml-vocab-*.gguf with .inp/.out),
every vocabulary token for token as llama.cpp.

The BERT vocabulary (WordPiece, 0.6 MB) is committed in tests/fixtures/vocab. The whole corpus (15
vocabularies, 70 MB) comes with the llama-cpp-python 0.3.36 source archive on the package index: it is
fetched once with pip and its ggml-vocab files kept in the edgeinfer cache ($EDGEINFER_HOME or
~/.cache/edgeinfer, llama-cpp-vocab/0.3.36), or read from $EDGEINFER_VOCAB_CORPUS (a folder of them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from edgeinfer.gguf import GGUFFile
from edgeinfer.models.fetch import cache_dir
from edgeinfer.tokenizer import Tokenizer

SDIST = "llama-cpp-python==0.3.36"
SEP = "\n__ggml_vocab_test__\n"
FIXTURES = Path(__file__).parent / "fixtures" / "vocab"
# the vocabularies of the corpus that have .inp/.out (aquila, baichuan, gpt-neox, nomic-bert-moe: none)
CORPUS = ("bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
          "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder")  # fmt: skip


def read_tests(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """test-tokenizer-0.cpp's read_tests: texts split at the separator, one line of ids per text."""
    raw = inp.read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = out.read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), f"{inp.name}: {len(texts)} texts, {len(lines)} id lines"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def check_vocab(folder: Path, name: str) -> None:
    gguf = folder / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer.from_gguf(GGUFFile(str(gguf)))
    wrong = []
    for text, expected in read_tests(Path(f"{gguf}.inp"), Path(f"{gguf}.out")):
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != expected:
            wrong.append((text[:60], got[:16], expected[:16]))
    assert not wrong, f"{name}: {len(wrong)} texts differ from llama.cpp, e.g. {wrong[:3]}"


def corpus_dir() -> Path | None:
    env = os.environ.get("EDGEINFER_VOCAB_CORPUS")
    if env:
        return Path(env)
    folder = cache_dir().parent / "llama-cpp-vocab" / "0.3.36"
    if (folder / "complete").exists():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                            "-d", tmp, "-q"], capture_output=True, text=True, timeout=600)  # fmt: skip
        archives = list(Path(tmp).glob("*.tar.gz"))
        if r.returncode or not archives:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                base = Path(m.name).name
                if m.isfile() and "/vendor/llama.cpp/models/" in m.name and base.startswith("ggml-vocab-"):
                    (folder / base).write_bytes(tar.extractfile(m).read())
        (folder / "complete").touch()
    return folder


def test_bert_wordpiece_matches_llama_cpp():
    check_vocab(FIXTURES, "bert-bge")


@pytest.fixture(scope="module")
def corpus():
    folder = corpus_dir()
    if folder is None:
        pytest.skip(f"llama.cpp's tokenizer corpus is not here and pip could not fetch {SDIST}")
    return folder


@pytest.mark.parametrize("name", CORPUS)
def test_llama_cpp_tokenizer_corpus(corpus, name):
    check_vocab(corpus, name)
