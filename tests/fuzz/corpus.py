"""Hostile model files: a handcrafted seed corpus (llama.cpp's tests/test-gguf.cpp and the published
cases) and the structured and byte-level mutations the fuzzer draws from."""

from __future__ import annotations

import copy
import math
import random
import struct
from collections.abc import Callable

from .gguf_raw import ARR, BOOL, F32, F64, I32, I64, KV, STR, U32, U64, U8, Spec, Tensor, serialize, tiny_model

INTS = [0, 1, -1, 2, 3, 7, 31, 33, 63, 64, 65, 127, 128, 255, 256, 4096, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1,
        2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, math.inf, -math.inf, math.nan]
STRINGS = ["", "x", "none", "linear", "yarn", "llama", "gpt2", "gemma3", "qwen3moe", "\x00", "a" * 1000, "😀"]
TEMPLATES = [
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'ab' * 4000000000 }}",
    "{{ 2 ** 2 ** 40 }}",
    "{{ 'x'|center(2000000000) }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ messages.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ raise_exception('no') }}",
    "{% for",
    "{{ messages[0]['content'] * 100000000 }}",
]


def _base() -> Spec:
    return tiny_model()


def _arch_key(s: Spec, suffix: str) -> str:
    kv = s.get("general.architecture")
    return f"{kv.value if kv is not None and isinstance(kv.value, str) else 'llama'}.{suffix}"


def handcrafted() -> list[tuple[str, bytes]]:
    """(name, file bytes) for each seed case."""
    cases: list[tuple[str, Spec | bytes]] = []

    def case(name: str, edit: Callable[[Spec], object] | None = None, base: Callable[[], Spec] = _base):
        s = base()
        if edit is not None:
            edit(s)
        cases.append((name, s))

    def setk(suffix, vtype, value, item_type=None):
        return lambda s: s.set(_arch_key(s, suffix), vtype, value, item_type)

    valid = serialize(_base())
    # header (test-gguf.cpp: HANDCRAFTED_HEADER_*)
    case("valid")
    case("bad_magic", lambda s: setattr(s, "magic", b"GGUX"))
    case("byteswapped_magic", lambda s: setattr(s, "magic", b"FUGG"))
    for v in (0, 1, 4, 0x03000000, 2**32 - 1):
        case(f"version_{v}", lambda s, v=v: setattr(s, "version", v))
    for n in (2**32, 2**63, 2**64 - 1, 10**6):
        case(f"n_kv_{n}", lambda s, n=n: setattr(s, "n_kv", n))
        case(f"n_tensors_{n}", lambda s, n=n: setattr(s, "n_tensors", n))
    case("n_kv_one_short", lambda s: setattr(s, "n_kv", len(s.kvs) - 1))
    case("n_tensors_one_more", lambda s: setattr(s, "n_tensors", len(s.tensors) + 1))
    # key/value (HANDCRAFTED_KV_*), CVE-2024-23496 (string length), CVE-2025-49847 (token length)
    case("kv_bad_type_13", lambda s: setattr(s.kvs[1], "vtype", 13))
    case("kv_bad_type_max", lambda s: setattr(s.kvs[1], "vtype", 2**32 - 1))
    case("kv_string_len_huge", lambda s: setattr(s.get("general.name"), "raw", struct.pack("<Q", 2**64 - 1) + b"x"))
    case("kv_string_len_2_63", lambda s: setattr(s.get("general.name"), "raw", struct.pack("<Q", 2**63) + b"x"))
    case("token_len_huge", lambda s: setattr(s.get("tokenizer.ggml.tokens"), "raw",
                                             struct.pack("<IQ", STR, 3) + struct.pack("<Q", 5) + b"hello"
                                             + struct.pack("<Q", 2**64 - 8) + b"x"))  # fmt: skip
    case("array_count_huge", lambda s: setattr(s.get("tokenizer.ggml.token_type"), "raw", struct.pack("<IQ", I32, 2**62)))
    case("array_count_wraps", lambda s: setattr(s.get("tokenizer.ggml.token_type"), "raw",
                                                struct.pack("<IQ", I64, 2**61) + b"\0" * 16))  # fmt: skip
    case("array_bad_item_type", lambda s: setattr(s.get("tokenizer.ggml.token_type"), "raw", struct.pack("<IQ", 99, 1)))
    case("array_nested_deep", lambda s: setattr(s.get("general.name"), "raw",
                                                (struct.pack("<IQ", ARR, 1)) * 40 + struct.pack("<IQ", U8, 0)))  # fmt: skip
    case("array_of_arrays_as_tokens", lambda s: s.set("tokenizer.ggml.tokens", ARR, [(ARR, ["a"], STR)] * 3, ARR))
    case("duplicate_key", lambda s: s.kvs.append(copy.deepcopy(s.kvs[1])))
    case("non_utf8_key", lambda s: s.kvs.append(KV(b"\xff\xfe".decode("latin-1"), U32, 1)))
    case("non_utf8_string", lambda s: setattr(s.get("general.name"), "raw", struct.pack("<Q", 2) + b"\xff\xfe"))
    # alignment
    for a in (0, 1, 3, 48, 2**31, 2**32 - 1):
        case(f"alignment_{a}", lambda s, a=a: s.set("general.alignment", U32, a))
    case("alignment_string", lambda s: s.set("general.alignment", STR, "32"))
    case("alignment_u64", lambda s: s.set("general.alignment", U64, 2**40))
    # tensors (HANDCRAFTED_TENSORS_*), CVE-2026-27940 (size overflow), ggml #1516, ollama CVE-2026-7482
    case("duplicate_tensor", lambda s: s.tensors.append(copy.deepcopy(s.tensors[1])))
    case("tensor_n_dims_0", lambda s: setattr(s.tensors[0], "n_dims", 0))
    case("tensor_n_dims_5", lambda s: setattr(s.tensors[0], "ne", [1, 1, 1, 1, 1]))
    case("tensor_dim_0", lambda s: setattr(s.tensors[0], "ne", [64, 0]))
    case("tensor_ne_overflow", lambda s: setattr(s.tensors[0], "ne", [2**32, 2**32, 2**32, 2**32]))
    case("tensor_ne_wraps_to_small", lambda s: setattr(s.tensors[0], "ne", [2**62, 4]))
    case("tensor_type_unknown", lambda s: setattr(s.tensors[0], "ggml_type", 1000))
    case("tensor_type_removed_4", lambda s: setattr(s.tensors[0], "ggml_type", 4))
    case("tensor_q4_0_row_33", lambda s: setattr(s.tensors[0], "ggml_type", 2) or setattr(s.tensors[0], "ne", [33, 8]))
    case("tensor_offset_misaligned", lambda s: setattr(s.tensors[2], "offset", 7))
    case("tensor_offset_past_eof", lambda s: setattr(s.tensors[-1], "offset", 2**40))
    case("tensor_offset_wraps", lambda s: setattr(s.tensors[-1], "offset", 2**64 - 32))
    case("tensors_overlap", lambda s: setattr(s.tensors[2], "offset", 0))
    case("tiny_file_claims_4_tib", lambda s: setattr(s, "tensors", [Tensor("token_embd.weight", [2**20, 2**20], 0, 0)])
         or setattr(s, "kvs", s.kvs[:1]))  # fmt: skip
    # semantics: the crashes of issue 18
    head = 32
    case("rope_dims_gt_head", setk("rope.dimension_count", U32, head + 2))
    case("rope_dims_2x_head", setk("rope.dimension_count", U32, 2 * head))
    case("rope_dims_odd", setk("rope.dimension_count", U32, 7))
    case("rope_dims_2_32", setk("rope.dimension_count", U64, 2**32))
    case("rope_dims_qwen3", setk("rope.dimension_count", U32, 4 * head), lambda: tiny_model(arch="qwen3"))
    case("head_count_0", setk("attention.head_count", U32, 0))
    case("head_count_kv_0", setk("attention.head_count_kv", U32, 0))
    case("head_count_huge", setk("attention.head_count", U32, 2**31))
    case("kv_heads_not_dividing", setk("attention.head_count_kv", U32, 3))
    case("head_size_0", setk("attention.key_length", U32, 0))
    case("block_count_negative", setk("block_count", I32, -1))
    case("block_count_0", setk("block_count", U32, 0))
    case("block_count_huge", setk("block_count", U32, 2**31))
    case("block_count_2", setk("block_count", U32, 2))
    case("block_count_float", setk("block_count", F32, 1.0))
    case("block_count_string", setk("block_count", STR, "1"))
    case("embedding_length_array", setk("embedding_length", ARR, [64, 64], U32))
    case("ff_0", setk("feed_forward_length", U32, 0))
    case("eps_inf", setk("attention.layer_norm_rms_epsilon", F32, math.inf))
    case("eps_nan", setk("attention.layer_norm_rms_epsilon", F32, math.nan))
    case("freq_base_neg_inf", setk("rope.freq_base", F32, -math.inf))
    case("freq_base_0", setk("rope.freq_base", F32, 0.0))
    case("yarn_ctx_0", lambda s: (s.set(_arch_key(s, "rope.scaling.type"), STR, "yarn"),
                                  s.set(_arch_key(s, "rope.scaling.factor"), F32, 4.0),
                                  s.set(_arch_key(s, "context_length"), U32, 0)))  # fmt: skip
    case("yarn_negative_factor", lambda s: (s.set(_arch_key(s, "rope.scaling.type"), STR, "yarn"),
                                            s.set(_arch_key(s, "rope.scaling.factor"), F32, -2.0)))  # fmt: skip
    case("rope_scaling_unknown", setk("rope.scaling.type", STR, "longrope"))
    case("expert_count_huge", setk("expert_count", U32, 2**31))
    case("expert_used_gt_count", lambda s: (s.set(_arch_key(s, "expert_count"), U32, 4),
                                            s.set(_arch_key(s, "expert_used_count"), U32, 8)))  # fmt: skip
    case("token_embd_1d", lambda s: setattr(s.tensors[0], "ne", [64 * 265]))
    case("token_embd_3d", lambda s: setattr(s.tensors[0], "ne", [64, 5, 53]))
    case("vocab_longer_than_rows", lambda s: s.set("tokenizer.ggml.tokens", ARR,
                                                   s.get("tokenizer.ggml.tokens").value + [f"x{i}" for i in range(50)], STR))  # fmt: skip
    case("arch_unknown", lambda s: s.set("general.architecture", STR, "llama4000"))
    case("arch_as_array", lambda s: s.set("general.architecture", ARR, ["llama"], STR))
    case("arch_as_int", lambda s: s.set("general.architecture", U32, 7))
    # tokenizer metadata
    case("merges_as_numbers", lambda s: s.set("tokenizer.ggml.merges", ARR, [1, 2, 3], U32))
    case("tokens_as_numbers", lambda s: s.set("tokenizer.ggml.tokens", ARR, list(range(265)), U32))
    case("tokens_empty", lambda s: s.set("tokenizer.ggml.tokens", ARR, [], STR))
    case("token_type_inf", lambda s: s.set("tokenizer.ggml.token_type", ARR, [math.inf] * 265, F32))
    case("scores_short", lambda s: s.set("tokenizer.ggml.scores", ARR, [0.0], F32))
    case("bos_id_inf", lambda s: s.set("tokenizer.ggml.bos_token_id", F32, math.inf))
    case("bos_id_huge", lambda s: s.set("tokenizer.ggml.bos_token_id", U64, 2**64 - 1))
    case("bos_id_string", lambda s: s.set("tokenizer.ggml.bos_token_id", STR, "1"))
    case("add_bos_string", lambda s: s.set("tokenizer.ggml.add_bos_token", STR, "yes"))
    case("tokenizer_model_int", lambda s: s.set("tokenizer.ggml.model", U32, 1))
    case("tokenizer_model_spm", lambda s: s.set("tokenizer.ggml.model", STR, "llama"))
    case("tokenizer_pre_int", lambda s: s.set("tokenizer.ggml.pre", I32, -1))
    case("tokenizer_pre_unknown", lambda s: s.set("tokenizer.ggml.pre", STR, "no-such-pre"))
    case("merges_missing", lambda s: s.kvs.remove(s.get("tokenizer.ggml.merges")))
    case("merges_garbage", lambda s: s.set("tokenizer.ggml.merges", ARR, ["", " ", "a", "  b", "\x00 \x00"], STR))
    # chat templates
    for i, t in enumerate(TEMPLATES):
        case(f"template_{i}", lambda s, t=t: s.set("tokenizer.chat_template", STR, t))
    case("template_as_int", lambda s: s.set("tokenizer.chat_template", U32, 5))
    out = [(name, serialize(s) if isinstance(s, Spec) else s) for name, s in cases]
    out.append(("key_len_huge", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"k" * 64))
    out.append(("tiny_160_bytes_4_tib", (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"t"
                                         + struct.pack("<I", 2) + struct.pack("<QQ", 2**21, 2**20)
                                         + struct.pack("<IQ", 0, 0)).ljust(160, b"\0")))  # fmt: skip
    # truncations (HANDCRAFTED_*_PARTIAL) and empty files
    for n in (0, 4, 8, 23, 24, 40, 200, len(valid) // 2, len(valid) - 1):
        out.append((f"truncated_{n}", valid[:n]))
    return out


# -- mutations ------------------------------------------------------------------------------------------


def _hostile_value(rng: random.Random) -> tuple[int, object, int | None]:
    kind = rng.random()
    if kind < 0.45:
        return rng.choice([U32, I32, U64, I64, U8]), rng.choice(INTS), None
    if kind < 0.65:
        return rng.choice([F32, F64]), rng.choice(FLOATS), None
    if kind < 0.8:
        return STR, rng.choice(STRINGS), None
    if kind < 0.85:
        return BOOL, rng.choice([0, 1, 2, 255]), None
    it = rng.choice([U32, I32, F32, STR])
    vals = [rng.choice(INTS if it in (U32, I32) else FLOATS if it == F32 else STRINGS) for _ in range(rng.randint(0, 4))]
    return ARR, vals, it


def mutate_structured(rng: random.Random) -> bytes:
    s = tiny_model(arch=rng.choice(["llama", "llama", "qwen3"]))
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.random()
        if op < 0.45:
            kv = rng.choice(s.kvs)
            kv.vtype, kv.value, kv.item_type = _hostile_value(rng)
            kv.raw = None
        elif op < 0.5:
            s.kvs.remove(rng.choice(s.kvs))
        elif op < 0.53:
            s.kvs.insert(rng.randrange(len(s.kvs) + 1), copy.deepcopy(rng.choice(s.kvs)))
        elif op < 0.7:
            t = rng.choice(s.tensors)
            j = rng.randrange(len(t.ne))
            t.ne = list(t.ne)
            t.ne[j] = rng.choice(INTS + [t.ne[j] * 2, t.ne[j] // 2, t.ne[j] + 1])
        elif op < 0.76:
            rng.choice(s.tensors).ggml_type = rng.choice([0, 1, 2, 3, 8, 12, 14, 30, 39, 1000])
        elif op < 0.82:
            rng.choice(s.tensors).offset = rng.choice(INTS)
        elif op < 0.86:
            s.tensors.remove(rng.choice(s.tensors))
        elif op < 0.88:
            s.tensors.append(copy.deepcopy(rng.choice(s.tensors)))
        elif op < 0.9:
            setattr(s, rng.choice(["n_kv", "n_tensors"]), rng.choice(INTS))
        elif op < 0.95:
            s.set("tokenizer.chat_template", STR, rng.choice(TEMPLATES))
        else:
            key = rng.choice(["rope.dimension_count", "attention.head_count", "attention.head_count_kv",
                              "block_count", "attention.key_length", "attention.value_length", "expert_count",
                              "rope.scaling.type", "rope.scaling.factor", "attention.sliding_window"])  # fmt: skip
            s.set(_arch_key(s, key), *_hostile_value(rng))
    return serialize(s)


_VALID: bytes | None = None


def mutate_bytes(rng: random.Random) -> bytes:
    global _VALID
    if _VALID is None:
        _VALID = serialize(tiny_model())
    b = bytearray(_VALID)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        head = min(len(b), 12000)  # metadata and tensor infos: where a flipped byte means something
        if head < 2:
            break
        op = rng.random()
        if op < 0.4:
            i = rng.randrange(head)
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.75:
            i = rng.randrange(max(1, head - 8))
            v = rng.choice(INTS) & (2**64 - 1)
            b[i : i + 8] = struct.pack("<Q", v) if rng.random() < 0.5 else struct.pack("<Q", v)[:4] + b[i + 4 : i + 8]
        elif op < 0.85:
            del b[rng.randrange(1, len(b)) :]
        elif op < 0.93:
            i = rng.randrange(head)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            i = rng.randrange(head)
            del b[i : i + rng.randint(1, 16)]
    return bytes(b)


def mutate(rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.55:
        return "structured", mutate_structured(rng)
    return "bytes", mutate_bytes(rng)
