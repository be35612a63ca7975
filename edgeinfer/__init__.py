"""edgeinfer: run quantized language models from GGUF files on the hardware people already own."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    DownloadError,
    EdgeInferError,
    GGUFError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedTypeError,
)

__all__ = [
    "__version__",
    "load",
    "LLM",
    "DownloadError",
    "EdgeInferError",
    "GGUFError",
    "ModelNotFoundError",
    "TokenizerError",
    "UnsupportedTypeError",
]


def __getattr__(name):
    # `edgeinfer.load` and `edgeinfer.LLM` import the engine on first use, so that `import edgeinfer`
    # (and commands like `edgeinfer info`) stay quick.
    if name in ("load", "LLM"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeinfer' has no attribute {name!r}")
