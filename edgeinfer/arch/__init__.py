"""Model architectures, one module per family, keyed by the file's `general.architecture`.

    model = build_model(GGUFFile(path), backend)       # -> arch.<family>.Model
    logits = model.forward(tokens, cache)              # float32 (n_tokens, n_vocab)

Adding an architecture: a new module with `Config` and `Model.from_gguf(f, backend)`, and one line in
ARCHITECTURES (or ALIASES, when the file's name for it is an existing family).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import UnsupportedArchitectureError, UnsupportedTypeError
from ..gguf import GGUFFile
from ..kernels.base import Backend
from .base import BaseConfig, DecoderModel, LayerBackends
from .validate import check_config

# general.architecture -> module in edgeinfer.arch
ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "gemma3": "gemma3",
    "gemma4": "gemma4",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen2moe": "qwen2moe",
    "qwen3moe": "qwen3moe",
    "olmoe": "olmoe",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "granite": "granite",
    "smollm3": "smollm3",
    "gpt-oss": "gptoss",
    "lfm2": "lfm2",
    "lfm2moe": "lfm2moe",
}

# other names files use for a supported family -> the name above
ALIASES: dict[str, str] = {
    "mistral": "llama",  # Mistral 7B v0.1-v0.3 as some converters label it (llama.cpp writes "llama")
}

SUPPORTED_ARCHITECTURES = tuple(sorted(set(ARCHITECTURES) | set(ALIASES)))


def get_arch_module(arch: str | None):
    """The module implementing `arch`; UnsupportedArchitectureError naming what is supported."""
    name = ALIASES.get(arch, arch) if isinstance(arch, str) else None
    if name not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"edgeinfer has no model code for the architecture {str(arch)[:80]!r}. Supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. Use a model of one of these families."
        )
    return importlib.import_module(f".{ARCHITECTURES[name]}", __name__)


def check_formats(f: GGUFFile) -> None:
    """UnsupportedTypeError, one sentence naming the file's tensor types edgeinfer cannot decode and
    listing those it can, when any tensor is in one (before a layer is built or a token run)."""
    from ..quant import SUPPORTED_TYPES, is_supported

    bad: dict[str, int] = {}
    for t in f.tensors.values():
        if not is_supported(t.ggml_type):
            name = getattr(t.ggml_type, "name", str(t.ggml_type))
            bad[name] = bad.get(name, 0) + 1
    if bad:
        which = ", ".join(f"{k} ({v} tensor{'s' if v > 1 else ''})" for k, v in sorted(bad.items()))
        raise UnsupportedTypeError(
            f"{f.path} holds tensors in {which}, which edgeinfer cannot decode; supported types: "
            f"{', '.join(t.name for t in SUPPORTED_TYPES)} (llama.cpp's llama-quantize can convert the file)."
        )


def load_config(f: GGUFFile) -> BaseConfig:
    """The hyperparameters of the file's model, from its metadata, checked against each other and the
    file's tensors (arch.validate): a GGUFError naming the keys when they disagree."""
    return check_config(get_arch_module(f.architecture).Config.from_gguf(f), f)


def build_model(
    f: GGUFFile, backend: Backend | None = None, layer_backend: Callable[[int], Backend] | None = None
) -> DecoderModel:
    """The model in an open GGUF file, its weights left in the file (zero-copy) and run by `backend`
    (default: the slow float32 ReferenceBackend). layer_backend(il), when given, is the backend of layer
    il's weights, and layer_backend(n_layer) that of the output head (GPU offload:
    edgeinfer.kernels.cuda.offload); the embedding stays on `backend`."""
    if backend is None:
        from ..kernels.reference import ReferenceBackend

        backend = ReferenceBackend()
    if layer_backend is not None:
        backend = LayerBackends(backend, layer_backend)
    load_config(f)  # the hyper-parameters checked before any layer or kernel sees them
    check_formats(f)
    model = get_arch_module(f.architecture).Model.from_gguf(f, backend)
    # their bytes now live in stacked or repacked copies (reading them again faults them back in)
    f.release_pages(model.stacked_sources())
    model.prepare_weights(release=f.release_pages)
    return model


__all__ = [
    "ARCHITECTURES",
    "ALIASES",
    "SUPPORTED_ARCHITECTURES",
    "BaseConfig",
    "DecoderModel",
    "LayerBackends",
    "build_model",
    "check_formats",
    "get_arch_module",
    "load_config",
]
