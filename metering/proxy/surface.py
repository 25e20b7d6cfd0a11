"""The rest of the /v1/ surface in the providers' own shapes (pure): the models list and one
model, OpenAI's or Anthropic's (when the request carries `anthropic-version`), and the JSON
404 and 405 for every other path or method."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from metering.proxy import errors

MODELS_PATH = "/v1/models"
# Anthropic's models carry a creation time; ours are routes, with none: the epoch, as OpenAI's
# `created: 0`.
EPOCH = "1970-01-01T00:00:00Z"


def looks_anthropic(headers: Mapping[str, str]) -> bool:
    """A request from Anthropic's SDKs (they always send `anthropic-version`)."""
    return "anthropic-version" in headers


def model_id_of(path: str) -> str | None:
    """The id in `/v1/models/{id}`, else None ("" for the list)."""
    if path == MODELS_PATH:
        return ""
    if path.startswith(MODELS_PATH + "/") and len(path) > len(MODELS_PATH) + 1:
        return path[len(MODELS_PATH) + 1 :]
    return None


def model_object(model_id: str, owner: str, anthropic: bool) -> dict[str, Any]:
    if anthropic:
        return {"type": "model", "id": model_id, "display_name": model_id, "created_at": EPOCH}
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def models_body(entries: Sequence[tuple[str, str]], anthropic: bool) -> bytes:
    """The list of (id, owner) entries in the provider's list shape."""
    data = [model_object(model_id, owner, anthropic) for model_id, owner in entries]
    if anthropic:
        return json.dumps(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        ).encode()
    return json.dumps({"object": "list", "data": data}).encode()


def unknown_model(model_id: str) -> errors.ProxyError:
    return errors.model_not_found(f"The model '{model_id}' does not exist.")


def not_found(method: str, path: str) -> errors.ProxyError:
    return errors.ProxyError(404, "not_found", f"Invalid URL ({method} {path}).", "unknown_url")


def wrong_method(method: str, path: str, allowed: str) -> errors.ProxyError:
    return errors.ProxyError(
        405, "invalid", f"{method} is not allowed on {path}: use {allowed}.", "method_not_allowed"
    )


# --- the Gemini API surface: /v1beta/models/{model}:generateContent ----------------------------

GEMINI_PREFIX = "/v1beta/"
# google-genai asks for /v1beta or (its default) /v1; the methods are the same on both.
GEMINI_MODELS = ("/v1beta/models/", "/v1/models/")
GEMINI_METHODS = {"generateContent": False, "streamGenerateContent": True}


def gemini_call_of(path: str) -> tuple[str, bool] | None:
    """(model, stream) for `/v1beta/models/{model}:generateContent` or `:streamGenerateContent`
    (or the same under /v1/), else None."""
    prefix = next((p for p in GEMINI_MODELS if path.startswith(p)), None)
    if prefix is None:
        return None
    model, sep, method = path[len(prefix) :].rpartition(":")
    if not sep or not model or method not in GEMINI_METHODS:
        return None
    return model, GEMINI_METHODS[method]


def gemini_stream_format(query: Mapping[str, str]) -> errors.ProxyError | None:
    """Streams are served as server-sent events (`alt=sse`, what Google's SDKs ask for); the
    other format (one JSON array) is refused."""
    if query.get("alt") == "sse":
        return None
    return errors.ProxyError(
        400,
        "invalid",
        "streamGenerateContent is served with alt=sse only.",
        "unsupported_stream_format",
        "alt",
    )
