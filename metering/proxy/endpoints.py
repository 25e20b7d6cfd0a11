"""The proxy's endpoints as Django views, for Django's test client, WSGI and the URLconf
(under ASGI `metering.asgi` serves /v1/ without them). Each adapts the request to the shell's
`Inbound` and its `Reply` to a Django response."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from metering.providers import gemini
from metering.proxy import counting, listing, shell, surface


def _inbound(request: HttpRequest) -> shell.Inbound:
    try:
        body: bytes | None = request.body
    except RequestDataTooBig:  # Django's own limit
        body = None
    return shell.Inbound(request.method or "GET", request.headers, body)


def django_response(reply: shell.Reply) -> HttpResponseBase:
    response: HttpResponseBase
    if reply.stream is not None:
        response = StreamingHttpResponse(reply.stream, status=reply.status)
    else:
        response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        response[name] = value
    return response


def _endpoint(endpoint: str):
    @csrf_exempt
    async def view(request: HttpRequest) -> HttpResponseBase:
        return django_response(await shell.handle(_inbound(request), endpoint))

    view.__name__ = view.__qualname__ = endpoint
    return view


chat_completions = _endpoint("chat")
responses = _endpoint("responses")
embeddings = _endpoint("embeddings")
messages = _endpoint("messages")
count_tokens = _endpoint("count_tokens")


async def models(request: HttpRequest, model_id: str = "") -> HttpResponseBase:
    return django_response(await listing.models(_inbound(request), model_id))


async def budget(request: HttpRequest) -> HttpResponseBase:
    return django_response(await listing.budget_view(_inbound(request)))


@csrf_exempt
async def generate_content(request: HttpRequest, target: str = "") -> HttpResponseBase:
    """The Gemini surface: `{model}:generateContent`, `:streamGenerateContent?alt=sse`,
    `:countTokens`, and (under /v1beta) the models list and one model."""
    del target
    path = request.path
    request_id = shell.request_id_new()
    inbound = _inbound(request)
    headers = {name.lower(): value for name, value in request.headers.items()}
    key = request.GET.get("key")
    if key and "x-goog-api-key" not in headers:
        headers["x-goog-api-key"] = key
    found = surface.gemini_call_of(path)
    counted = surface.gemini_count_of(path)
    if found is None and counted is not None:
        inbound = shell.Inbound(inbound.method, headers, inbound.body, model=counted)
        return django_response(await shell.handle(inbound, counting.GEMINI_ENDPOINT))
    if found is None:
        name = surface.gemini_model_of(path)
        if name is not None:
            inbound = shell.Inbound(inbound.method, headers, inbound.body)
            return django_response(await listing.gemini_models(inbound, name, request.GET))
        error = surface.not_found(request.method or "GET", path)
        return django_response(shell.error_reply(gemini.ENDPOINT, error, request_id))
    model, stream = found
    refusal = surface.gemini_stream_format(request.GET) if stream else None
    if refusal is not None:
        return django_response(shell.error_reply(gemini.ENDPOINT, refusal, request_id))
    inbound = shell.Inbound(inbound.method, headers, inbound.body, model=model, stream=stream)
    return django_response(await shell.handle(inbound, gemini.ENDPOINT))
