"""Exceptions a user can meet. Each message says what went wrong and what to do."""


class EdgeInferError(Exception):
    """Base class of every error edgeinfer raises on purpose."""


class GGUFError(EdgeInferError, ValueError):
    """The file is not a valid GGUF file (or is damaged)."""


class UnsupportedTypeError(EdgeInferError, NotImplementedError):
    """A tensor uses a quantization type this build cannot decode."""


class TokenizerError(EdgeInferError, ValueError):
    """The file's vocabulary cannot be turned into a tokenizer."""


class ModelNotFoundError(EdgeInferError, FileNotFoundError):
    """A model name or path that does not resolve to a file."""


class DownloadError(EdgeInferError, RuntimeError):
    """A model could not be fetched or failed its checksum."""


class ContextFullError(EdgeInferError, RuntimeError):
    """A sequence grew past the context size (n_ctx) of its KV cache. Never truncated silently."""


class UnsupportedArchitectureError(EdgeInferError, NotImplementedError):
    """The file's `general.architecture` is one edgeinfer has no model code for."""


class PromptTooLongError(ContextFullError, ValueError):
    """The prompt does not fit the context with room for one generated token (HTTP 400). Never truncated."""


class InvalidPromptError(EdgeInferError, ValueError):
    """The prompt is empty or holds token ids outside the vocabulary (HTTP 400)."""


class QueueFullError(EdgeInferError, RuntimeError):
    """Too many requests are waiting; try again later (HTTP 503 with Retry-After: retry_after_s, the
    runner's estimate of when a place frees up)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s
