"""The proxy's URLs (/v1/...), kept apart from the REST API.

Served by `metering.asgi.ProxyApplication` under ASGI (straight into `metering.proxy.shell`,
no Django request or middleware) and, for tools that use Django's test client or WSGI, through
the ordinary URLconf too.
"""

from __future__ import annotations

from django.urls import path

from metering import ops
from metering.proxy import endpoints

urlpatterns = [
    path("v1/chat/completions", endpoints.chat_completions, name="proxy-chat"),
    path("v1/responses", endpoints.responses, name="proxy-responses"),
    path("v1/embeddings", endpoints.embeddings, name="proxy-embeddings"),
    path("v1/messages", endpoints.messages, name="proxy-messages"),
    path("v1/messages/count_tokens", endpoints.count_tokens, name="proxy-count-tokens"),
    path("v1/budget", endpoints.budget, name="proxy-budget"),
    path("v1/models", endpoints.models, name="proxy-models"),
    path(
        "v1/models/<str:target>:generateContent",
        endpoints.generate_content,
        name="proxy-gemini-v1",
    ),
    path(
        "v1/models/<str:target>:streamGenerateContent",
        endpoints.generate_content,
        name="proxy-gemini-stream-v1",
    ),
    path(
        "v1/models/<str:target>:countTokens",
        endpoints.generate_content,
        name="proxy-gemini-count-v1",
    ),
    path("v1/models/<path:model_id>", endpoints.models, name="proxy-model"),
    path("v1beta/models", endpoints.generate_content, name="proxy-gemini-models"),
    path("v1beta/models/<str:target>", endpoints.generate_content, name="proxy-gemini"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
]


def views_by_path() -> dict:
    return {"/" + str(pattern.pattern): pattern.callback for pattern in urlpatterns}
