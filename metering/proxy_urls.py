"""The proxy's URLs (/v1/...), kept apart from the REST API.

Served by `metering.asgi.ProxyApplication` under ASGI (no middleware) and, for tools that use
Django's test client or WSGI, through the ordinary URLconf too.
"""

from __future__ import annotations

from django.urls import path

from metering import ops, views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions, name="proxy-chat"),
    path("v1/responses", views.responses, name="proxy-responses"),
    path("v1/embeddings", views.embeddings, name="proxy-embeddings"),
    path("v1/messages", views.messages, name="proxy-messages"),
    path("v1/models", views.models, name="proxy-models"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
]


def views_by_path() -> dict:
    return {"/" + str(pattern.pattern): pattern.callback for pattern in urlpatterns}
