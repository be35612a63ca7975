"""A GGUF writer that writes whatever it is told: forged counts, types, lengths, offsets, shapes.

A file is a `Spec` (version, metadata entries, tensor infos, data) serialized field by field, so a test
can lie about any field (llama.cpp's tests/test-gguf.cpp does the same in C). `tiny_model()` is a
valid little llama model with a byte-level BPE vocabulary and a chat template: the seed every
structured mutation starts from.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
GGML_F32 = 0


@dataclass
class KV:
    key: str
    vtype: int
    value: Any
    item_type: int | None = None  # arrays: the type of the items
    raw: bytes | None = None  # the encoded value as it is (a forged one); overrides value


@dataclass
class Tensor:
    name: str
    ne: list[int]
    ggml_type: int = GGML_F32
    offset: int | None = None  # None: placed after the previous one, aligned
    data: bytes = b""
    n_dims: int | None = None  # a forged dimension count


@dataclass
class Spec:
    kvs: list[KV] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    magic: bytes = b"GGUF"
    version: int = 3
    n_kv: int | None = None  # forged counts
    n_tensors: int | None = None
    alignment: int = 32
    tail: bytes = b""  # appended after the data

    def get(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, vtype: int, value: Any, item_type: int | None = None) -> None:
        kv = self.get(key)
        if kv is None:
            self.kvs.append(KV(key, vtype, value, item_type))
        else:
            kv.vtype, kv.value, kv.item_type, kv.raw = vtype, value, item_type, None

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: int, value: Any, item_type: int | None = None) -> bytes:
    if vtype in _FMT:
        fmt = "<" + _FMT[vtype]
        if vtype in (F32, F64):
            try:
                return struct.pack(fmt, float(value))
            except OverflowError:
                return struct.pack(fmt, float("inf"))
        if vtype == BOOL:
            return struct.pack("<B", int(value) & 0xFF)
        bits = struct.calcsize(fmt) * 8
        v = int(value) & ((1 << bits) - 1)
        if fmt[-1].islower() and v >= 1 << (bits - 1):
            v -= 1 << bits
        return struct.pack(fmt, v)
    if vtype == STR:
        return _str(value)
    if vtype == ARR:
        it = STR if item_type is None else item_type
        items = list(value)
        return struct.pack("<IQ", it, len(items)) + b"".join(
            encode_value(it, x[1], x[2]) if it == ARR else encode_value(it, x) for x in items
        )
    return b"\0" * 8  # an unknown (forged) type: some bytes the reader must refuse to interpret


def serialize(spec: Spec) -> bytes:
    out = bytearray()
    n_kv = len(spec.kvs) if spec.n_kv is None else spec.n_kv
    n_t = len(spec.tensors) if spec.n_tensors is None else spec.n_tensors
    out += spec.magic[:4].ljust(4, b"\0") + struct.pack("<IQQ", spec.version & 0xFFFFFFFF, n_t & (2**64 - 1),
                                                        n_kv & (2**64 - 1))  # fmt: skip
    for kv in spec.kvs:
        out += _str(kv.key) + struct.pack("<I", kv.vtype & 0xFFFFFFFF)
        out += kv.raw if kv.raw is not None else encode_value(kv.vtype, kv.value, kv.item_type)
    offsets, pos = [], 0
    for t in spec.tensors:
        if t.offset is None:
            pos = -(-pos // spec.alignment) * spec.alignment
            offsets.append(pos)
            pos += len(t.data)
        else:
            offsets.append(t.offset)
    for t, off in zip(spec.tensors, offsets):
        n_dims = len(t.ne) if t.n_dims is None else t.n_dims
        out += _str(t.name) + struct.pack("<I", n_dims & 0xFFFFFFFF)
        out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.ne)
        out += struct.pack("<IQ", t.ggml_type & 0xFFFFFFFF, off & (2**64 - 1))
    align = spec.alignment if spec.alignment > 0 else 32
    out += b"\0" * (-len(out) % align)
    base = len(out)
    for t, off in zip(spec.tensors, offsets):
        if t.offset is None and t.data:
            end = base + off + len(t.data)
            if len(out) < end:
                out += b"\0" * (end - len(t.data) - len(out))
            out[base + off : base + off + len(t.data)] = t.data
    out += spec.tail
    return bytes(out)


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def tiny_model(seed: int = 0, n_embd: int = 64, n_head: int = 2, n_head_kv: int = 1, n_ff: int = 96,
               n_layer: int = 1, arch: str = "llama") -> Spec:  # fmt: skip
    """A valid, runnable tiny model: byte-level BPE vocabulary (256 bytes, a few merges, ChatML
    specials), F32 weights of a llama block (or qwen3's, with QK-norm), a chat template."""
    rng = np.random.default_rng(seed)
    byte_tokens = _byte_tokens()
    merges = ["Ġ t", "h e", "i n", "Ġ a", "e r", "Ġt he"]
    tokens = byte_tokens + ["Ġt", "he", "in", "Ġa", "er", "Ġthe", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    n_vocab = len(tokens)
    types = [1] * (n_vocab - 3) + [3, 3, 3]
    head = n_embd // n_head
    s = Spec()
    s.set("general.architecture", STR, arch)
    s.set("general.name", STR, "fuzz-tiny")
    s.set("general.alignment", U32, 32)
    a = arch
    s.set(f"{a}.context_length", U32, 256)
    s.set(f"{a}.embedding_length", U32, n_embd)
    s.set(f"{a}.block_count", U32, n_layer)
    s.set(f"{a}.feed_forward_length", U32, n_ff)
    s.set(f"{a}.attention.head_count", U32, n_head)
    s.set(f"{a}.attention.head_count_kv", U32, n_head_kv)
    s.set(f"{a}.attention.layer_norm_rms_epsilon", F32, 1e-5)
    s.set(f"{a}.rope.freq_base", F32, 10000.0)
    s.set(f"{a}.rope.dimension_count", U32, head)
    s.set("tokenizer.ggml.model", STR, "gpt2")
    s.set("tokenizer.ggml.pre", STR, "smollm")
    s.set("tokenizer.ggml.tokens", ARR, tokens, STR)
    s.set("tokenizer.ggml.token_type", ARR, types, I32)
    s.set("tokenizer.ggml.merges", ARR, merges, STR)
    s.set("tokenizer.ggml.bos_token_id", U32, n_vocab - 3)
    s.set("tokenizer.ggml.eos_token_id", U32, n_vocab - 2)
    s.set("tokenizer.chat_template", STR, CHATML)

    def w(name, *ne, scale=0.05):
        arr = (rng.standard_normal(int(np.prod(ne))) * scale).astype("<f4")
        s.tensors.append(Tensor(name, list(ne), GGML_F32, None, arr.tobytes()))

    def ones(name, n):
        s.tensors.append(Tensor(name, [n], GGML_F32, None, np.ones(n, "<f4").tobytes()))

    w("token_embd.weight", n_embd, n_vocab, scale=0.5)
    for il in range(n_layer):
        p = f"blk.{il}."
        ones(p + "attn_norm.weight", n_embd)
        w(p + "attn_q.weight", n_embd, n_head * head)
        w(p + "attn_k.weight", n_embd, n_head_kv * head)
        w(p + "attn_v.weight", n_embd, n_head_kv * head)
        w(p + "attn_output.weight", n_head * head, n_embd)
        if arch == "qwen3":
            ones(p + "attn_q_norm.weight", head)
            ones(p + "attn_k_norm.weight", head)
        ones(p + "ffn_norm.weight", n_embd)
        w(p + "ffn_gate.weight", n_embd, n_ff)
        w(p + "ffn_up.weight", n_embd, n_ff)
        w(p + "ffn_down.weight", n_ff, n_embd)
    ones("output_norm.weight", n_embd)
    return s
