"""Stripe test helpers: localstripe customers and invoices, the background syncs, and a proxy in
front of localstripe that loses answers the way a flaky network does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from django.conf import settings

from billing import stripe_api

AUTH = {"Authorization": "Bearer sk_test_tokenbudget"}


def link_customer(cost_center: Any) -> str:
    """A real localstripe customer for the cost center (with the $0 subscription localstripe
    needs before it invoices anyone)."""
    ref = stripe_api.customer_create(
        name=cost_center.name, metadata={"tb_cost_center": cost_center.code},
        idempotency_key=f"test-customer-{cost_center.code}",
    )  # fmt: skip
    cost_center.stripe_customer_id = ref.id
    cost_center.save(update_fields=["stripe_customer_id"])
    # localstripe gap: it only creates an invoice for a customer with a subscription, so the
    # test customer gets a $0 one (real Stripe invoices pending items without any).
    base = settings.TB_STRIPE_API_BASE
    plan = {"id": "tb-zero", "amount": 0, "currency": "usd", "interval": "month",
            "product[name]": "zero"}  # fmt: skip
    httpx.post(f"{base}/v1/plans", data=plan, headers=AUTH)
    sub = {"customer": ref.id, "items[0][plan]": "tb-zero"}
    httpx.post(f"{base}/v1/subscriptions", data=sub, headers=AUTH).raise_for_status()
    return ref.id


def stripe_invoices(base: str, customer: str) -> list[dict[str, Any]]:
    """The customer's invoices made by Tokenbudget (not the $0 subscription's own)."""
    response = httpx.get(f"{base}/v1/invoices", params={"customer": customer}, headers=AUTH)
    return [i for i in response.json()["data"] if "[tb-stmt-" in (i["description"] or "")]


def pending_items(base: str, customer: str) -> list[dict[str, Any]]:
    """The customer's invoice items on no invoice yet (they would go on the next one)."""
    response = httpx.get(f"{base}/v1/invoiceitems", params={"customer": customer}, headers=AUTH)
    return [i for i in response.json()["data"] if not i.get("invoice")]


def billed_lines(invoice: dict[str, Any]) -> list[int]:
    return sorted(line["amount"] for line in invoice["lines"]["data"] if line["amount"])


def join_syncs(timeout: float = 30.0) -> None:
    """Wait for the Stripe syncs started in background threads (the in-process default)."""
    for thread in threading.enumerate():
        if thread.name.startswith("stripe-sync-"):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"


class LossyProxy:
    """An HTTP proxy to localstripe. `lose("POST", "/v1/invoices")` makes the next such request
    reach Stripe but its answer never come back (the connection closes), and every repeat of it
    fail the same way without reaching Stripe, until `heal()`; `down()` fails every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rule: tuple[str, str] | None = None
        self.is_down = False
        self.forwarded_under_rule = 0
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                proxy.seen.append((self.command, path))
                if proxy.is_down:
                    self.close_connection = True  # Stripe unreachable: no answer at all
                    return
                lost = proxy.rule == (self.command, path)
                if lost and proxy.forwarded_under_rule:
                    self.close_connection = True  # a repeat: never reaches Stripe
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                if lost:
                    proxy.forwarded_under_rule += 1
                    self.close_connection = True  # Stripe did it; the answer is lost
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.content)
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def lose(self, method: str, path: str) -> None:
        self.rule, self.forwarded_under_rule = (method, path), 0

    def heal(self) -> None:
        self.rule, self.is_down = None, False

    def down(self) -> None:
        """Every request fails without reaching Stripe, until `heal()`."""
        self.is_down = True


@contextmanager
def lossy_proxy(upstream: str) -> Iterator[LossyProxy]:
    proxy = LossyProxy(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
