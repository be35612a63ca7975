"""GGUF files: a fast validating reader, and the constants of the `gguf` package re-exported."""

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from ..errors import GGUFError
from .reader import GGUFFile, TensorInfo, open_gguf

__all__ = [
    "GGUFFile",
    "GGUFError",
    "TensorInfo",
    "open_gguf",
    "GGMLQuantizationType",
    "GGUFValueType",
    "GGML_QUANT_SIZES",
    "Keys",
]
