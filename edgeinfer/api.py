"""The library surface desktop apps embed: `edgeinfer.load(...)` and `LLM`.

This version loads the weights (memory-mapped, zero-copy) and the tokenizer; the forward pass,
`logits`, `generate` and `chat` arrive with the engine.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import EdgeInferError
from .gguf import GGUFFile
from .models import resolve_model
from .system import default_threads
from .tokenizer import Tokenizer
from .tokenizer.chat import ChatTemplate


class LLM:
    """A loaded model: its GGUF file, tokenizer and chat template."""

    def __init__(self, path: Path, gguf: GGUFFile, tokenizer: Tokenizer, n_ctx: int, n_threads: int):
        self.path = path
        self.gguf = gguf
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        m = gguf.metadata
        self.chat_template = ChatTemplate.from_metadata(
            m,
            token_texts=set(tokenizer.vocab.token_to_id),
            bos_token=tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else "",
            eos_token=tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else "",
        )

    @property
    def metadata(self) -> dict:
        return self.gguf.metadata

    @property
    def architecture(self) -> str | None:
        return self.gguf.architecture

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    @property
    def n_ctx_train(self) -> int | None:
        return self.gguf.arch_get("context_length")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, exactly as llama.cpp's `llama_tokenize` gives them.
        `add_special`: BOS/EOS as the file's flags say; `parse_special`: spell control tokens in text."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes a str, not {type(text).__name__}")
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """Text of token ids (invalid UTF-8 across a cut becomes U+FFFD)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special=skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` under the model's chat template."""
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def tokenize_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat prompt: the template's text, special tokens parsed, BOS added once."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        add_bos = not self.chat_template.starts_with_bos(text)
        return self.tokenizer.encode(text, add_special=add_bos, parse_special=True)

    def __repr__(self) -> str:
        return f"LLM({str(self.path)!r}, arch={self.architecture!r}, n_ctx={self.n_ctx})"


def load(
    model: str | os.PathLike,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    draft: str | os.PathLike | None = None,
    n_gpu_layers: int = 0,
    progress: bool = True,
) -> LLM:
    """Load a GGUF file or a registry name (fetched on first use) and return an `LLM`."""
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise EdgeInferError(f"n_ctx must be a positive integer, got {n_ctx!r}.")
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads <= 0):
        raise EdgeInferError(f"n_threads must be a positive integer or None, got {n_threads!r}.")
    if draft is not None:
        raise EdgeInferError("Speculative decoding with a draft model is not available yet in this version.")
    if n_gpu_layers:
        raise EdgeInferError("GPU offload is not available yet in this version; use n_gpu_layers=0.")
    path = resolve_model(model, progress=progress)
    gguf = GGUFFile(path)
    tokenizer = Tokenizer.from_gguf(gguf)
    return LLM(path, gguf, tokenizer, n_ctx=n_ctx, n_threads=n_threads or default_threads())
