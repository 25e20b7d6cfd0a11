"""Provider wire protocols. Each module offers the same functions for its endpoints:
`parse_request`, `build_upstream_body`, `usage_from_body`, `stream_meter`, `error_body` and
`MIN_OUTPUT_TOKENS`."""

from __future__ import annotations

from types import ModuleType

from metering.providers import anthropic, openai

# The client-facing endpoint decides the wire format of both request and response.
PROTOCOLS: dict[str, ModuleType] = {
    "chat": openai,
    "responses": openai,
    "embeddings": openai,
    "messages": anthropic,
}

# URL path (after the /v1 prefix) -> endpoint name.
ENDPOINT_PATHS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
}


def protocol_for(endpoint: str) -> ModuleType:
    """The provider module that speaks `endpoint`; KeyError for an unknown endpoint."""
    return PROTOCOLS[endpoint]
