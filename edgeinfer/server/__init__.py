"""`edgeinfer serve`: an OpenAI-compatible HTTP API over a runner (see app.py; validation in protocol.py,
the /metrics page in metrics.py)."""

from .app import DEFAULT_MAX_BODY_BYTES, create_app, serve
from .protocol import GenerationRequest, RequestError, parse_chat_request, parse_completion_request

__all__ = [
    "DEFAULT_MAX_BODY_BYTES", "GenerationRequest", "RequestError", "create_app", "parse_chat_request",
    "parse_completion_request", "serve",
]  # fmt: skip
