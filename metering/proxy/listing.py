"""The /v1/ paths that are not metered calls (pure reads, never held or billed): the models
list and one model, the caller's budget, and the JSON 404 for any other path. Each answers in
the shape the request looks like (Anthropic's when it carries `anthropic-version`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from metering.dbpool import in_db_thread
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import Provider
from metering.providers.gemini import PROVIDER as GEMINI
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import budget, counting, errors, surface
from metering.proxy.errors import Headers, ProxyError
from metering.proxy.shell import Inbound, Reply, authenticate, request_id_new
from metering.selectors import aliases_for_key, routes_for_key

_routes_for_key = in_db_thread(routes_for_key)
_aliases_for_key = in_db_thread(aliases_for_key)
_budget_load = in_db_thread(budget.budget_load)


async def models(inbound: Inbound, model_id: str = "") -> Reply:
    """GET /v1/models (the routes and aliases this key may call) or /v1/models/{id}, in
    OpenAI's shape or, for Anthropic's SDKs, Anthropic's."""
    request_id = request_id_new()
    anthropic = surface.looks_anthropic(inbound.headers)
    provider = ANTHROPIC if anthropic else OPENAI
    try:
        if inbound.method not in ("GET", "HEAD"):
            raise surface.wrong_method(inbound.method, surface.MODELS_PATH, "GET")
        info = inbound.key_info or await authenticate(inbound.headers)
    except ProxyError as error:
        return _rendered(provider, error, request_id)
    routes = await _routes_for_key(info)
    aliases = await _aliases_for_key(info, [route.public_name for route in routes])
    entries = [(route.public_name, route.upstream.kind) for route in routes]
    entries += [(alias, "tokenbudget") for alias in aliases]
    if model_id:
        owners = dict(entries)
        if model_id not in owners:
            return _rendered(provider, surface.unknown_model(model_id), request_id)
        body = json.dumps(surface.model_object(model_id, owners[model_id], anthropic)).encode()
    else:
        body = surface.models_body(entries, anthropic)
    headers: Headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-request-id", request_id),
    ]
    return Reply(200, headers, body)


async def gemini_models(inbound: Inbound, model_id: str, query: Mapping[str, str]) -> Reply:
    """GET /v1beta/models (paged by `pageSize` / `pageToken`) or /v1beta/models/{name}, in
    Gemini's shape: the same routes and aliases as /v1/models, a Gemini route (and an
    `auto:<intent>` name) with generateContent, streamGenerateContent and countTokens, any
    other route with countTokens only (counted locally)."""
    request_id = request_id_new()
    try:
        if inbound.method not in ("GET", "HEAD"):
            raise surface.wrong_method(inbound.method, surface.GEMINI_MODELS_PATH, "GET")
        info = inbound.key_info or await authenticate(inbound.headers)
        page = surface.gemini_page(query) if not model_id else (0, "")
    except ProxyError as error:
        return _rendered(GEMINI, error, request_id)
    routes = await _routes_for_key(info)
    aliases = await _aliases_for_key(info, [route.public_name for route in routes])
    entries: list[tuple[str, tuple[str, ...]]] = [
        (
            route.public_name,
            surface.GEMINI_SERVED
            if route.upstream.kind in counting.GEMINI_KINDS
            else surface.COUNT_ONLY,
        )
        for route in routes
    ]
    entries += [(alias, surface.GEMINI_SERVED) for alias in aliases]
    if model_id:
        name = model_id.removeprefix("models/")
        methods = dict(entries).get(name)
        if methods is None:
            return _rendered(GEMINI, surface.unknown_model(name), request_id)
        body = json.dumps(surface.gemini_model_object(name, methods)).encode()
    else:
        body = surface.gemini_models_body(entries, *page)
    headers: Headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-request-id", request_id),
    ]
    return Reply(200, headers, body)


async def budget_view(inbound: Inbound) -> Reply:
    """GET /v1/budget: the key's budget, never billed (see `metering.proxy.budget`)."""
    request_id = request_id_new()
    provider = ANTHROPIC if surface.looks_anthropic(inbound.headers) else OPENAI
    try:
        if inbound.method not in ("GET", "HEAD"):
            raise surface.wrong_method(inbound.method, budget.PATH, "GET")
        info = inbound.key_info or await authenticate(inbound.headers)
    except ProxyError as error:
        return _rendered(provider, error, request_id)
    body = json.dumps(await _budget_load(info)).encode()
    headers: Headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-request-id", request_id),
        ("cache-control", "no-store"),
    ]
    return Reply(200, headers, body)


def _rendered(provider: Provider, error: ProxyError, request_id: str) -> Reply:
    status, headers, body = errors.render(provider, error, request_id)
    return Reply(status, headers, body)


def unknown_path(inbound: Inbound, path: str) -> Reply:
    """Any other path under /v1/: a JSON 404 in the shape the request looks like."""
    provider = ANTHROPIC if surface.looks_anthropic(inbound.headers) else OPENAI
    return _rendered(provider, surface.not_found(inbound.method, path), request_id_new())
