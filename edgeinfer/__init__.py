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
    "DownloadError",
    "EdgeInferError",
    "GGUFError",
    "ModelNotFoundError",
    "TokenizerError",
    "UnsupportedTypeError",
]
