"""Tokenizers built from a GGUF vocabulary, token for token identical to llama.cpp.

    from edgeinfer.gguf import GGUFFile
    from edgeinfer.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(GGUFFile("model.gguf"))
    ids = tok.encode("Hello", add_special=True, parse_special=False)
    text = tok.decode(ids)

BPE (`tokenizer.ggml.model` 'gpt2', pre-tokenizer per `tokenizer.ggml.pre`) and SPM ('llama').
"""

from .base import Tokenizer
from .stream import StreamingDetokenizer
from .vocab import TokenAttr, TokenType, Vocab

__all__ = ["Tokenizer", "StreamingDetokenizer", "Vocab", "TokenAttr", "TokenType"]
