"""The Stripe webhook endpoint (plain Django: it must read the raw, unparsed body)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_api
from billing.stripe_sync import stripe_webhook_handle


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify the signature over the raw body, apply the event once, answer fast.

    A bad or missing signature gets 400 and changes nothing; a repeated event id gets 200.
    """
    try:
        event = stripe_api.webhook_event_construct(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except stripe_api.WebhookSignatureInvalid:
        return JsonResponse({"error": "invalid signature"}, status=400)
    processed = stripe_webhook_handle(event=event)
    return JsonResponse({"received": True, "duplicate": not processed})
