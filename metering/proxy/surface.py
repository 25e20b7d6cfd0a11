"""The rest of the /v1/ surface in the providers' own shapes (pure): the models list and one
model, OpenAI's or Anthropic's (when the request carries `anthropic-version`), and the JSON
404 and 405 for every other path or method; the Gemini API surface's paths and its models list
(`/v1beta/models`, paged) in Gemini's shape."""

from __future__ import annotations

import base64
import binascii
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


GEMINI_COUNT = "countTokens"
GEMINI_MODELS_PATH = "/v1beta/models"
GEMINI_MAX_PAGE = 1000  # the Gemini API's own bound on pageSize
GEMINI_DEFAULT_PAGE = 50
# What a Gemini route serves here; any other route is only counted (locally).
GEMINI_SERVED = ("generateContent", "streamGenerateContent", GEMINI_COUNT)
COUNT_ONLY = (GEMINI_COUNT,)


def gemini_count_of(path: str) -> str | None:
    """The model of `/v1beta/models/{model}:countTokens` (or the same under /v1/), else None."""
    prefix = next((p for p in GEMINI_MODELS if path.startswith(p)), None)
    if prefix is None:
        return None
    model, sep, method = path[len(prefix) :].rpartition(":")
    if not sep or not model or method != GEMINI_COUNT:
        return None
    return model


# The Gemini API's methods on a model: a path ending in one is no model read (`auto:<intent>`
# names hold a colon too).
GEMINI_MODEL_METHODS = frozenset(
    {
        *GEMINI_METHODS,
        "countTokens",
        "embedContent",
        "batchEmbedContents",
        "asyncBatchEmbedContent",
        "batchGenerateContent",
        "predict",
        "predictLongRunning",
    }
)


def gemini_model_of(path: str, prefix: str = GEMINI_MODELS_PATH) -> str | None:
    """The name in `/v1beta/models/{name}` ("" for the list, None for any other path). A path
    ending in one of the API's methods (`{name}:embedContent`) is not a model read."""
    if path in (prefix, prefix + "/"):
        return ""
    if not path.startswith(prefix + "/"):
        return None
    name = path[len(prefix) + 1 :]
    head, sep, method = name.rpartition(":")
    if sep and (not head or method in GEMINI_MODEL_METHODS):
        return None
    return name


def looks_gemini(headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """A request from Google's clients: its key in `x-goog-api-key` or `?key=`, or the
    `x-goog-api-client` header Google's SDKs send."""
    return "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key" in query


def gemini_model_object(name: str, methods: Sequence[str]) -> dict[str, Any]:
    """A Gemini `Model`: `models/{public name}` and the methods it may be called with."""
    return {
        "name": f"models/{name}",
        "baseModelId": name,
        "displayName": name,
        "supportedGenerationMethods": list(methods),
    }


def gemini_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")


def gemini_page(query: Mapping[str, str]) -> tuple[int, str]:
    """(pageSize, the name the page starts after) from `pageSize` and `pageToken`; a 400
    INVALID_ARGUMENT for a size that is not a whole number or a token this list never gave."""
    raw_size = query.get("pageSize", "")
    if raw_size:
        if not raw_size.isdigit() or len(raw_size) > 9:
            raise errors.invalid_request("pageSize must be a non-negative integer.", "pageSize")
        size = int(raw_size) or GEMINI_DEFAULT_PAGE
    else:
        size = GEMINI_DEFAULT_PAGE
    token = query.get("pageToken", "")
    after = ""
    if token:
        try:
            after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, ValueError):
            raise errors.invalid_request("Invalid pageToken.", "pageToken") from None
        if not after:
            raise errors.invalid_request("Invalid pageToken.", "pageToken")
    return min(size, GEMINI_MAX_PAGE), after


def gemini_models_body(
    entries: Sequence[tuple[str, Sequence[str]]], size: int, after: str
) -> bytes:
    """One page of the (name, methods) entries, sorted by name, after `after`; the
    `nextPageToken` when more follow."""
    ordered = sorted((e for e in entries if e[0] > after), key=lambda e: e[0])
    page = ordered[:size]
    body: dict[str, Any] = {"models": [gemini_model_object(n, m) for n, m in page]}
    if len(ordered) > size:
        body["nextPageToken"] = gemini_page_token(page[-1][0])
    return json.dumps(body).encode()
