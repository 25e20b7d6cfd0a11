"""The call lifecycle's one owner of a hold (issue #12): every hold is closed exactly once, a
record the database refuses is still written (with safe text) and charged, and a hold whose
request ended without closing it (a stream never started) is given back."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from budgets.models import Allowance, Reservation
from metering import dbpool
from metering.models import UsageRecord
from metering.providers.base import ParsedRequest
from metering.proxy.call import Call
from metering.proxy.hold import HoldOwner, write
from metering.quota import interface
from metering.selectors import key_hash, key_info_load
from metering.services import CallHold, key_create
from tests.budgets.factories import AllowanceFactory
from tests.metering.test_quota_redis import ESTIMATE, record_for


@pytest.fixture
def inline_db(settings: Any, monkeypatch: pytest.MonkeyPatch, transactional_db: None) -> None:
    """The database quota backend, its work run inline on a connection closed after each piece."""
    settings.REDIS_URL = ""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    async def submit(fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        finally:
            connections.close_all()

    monkeypatch.setattr(dbpool.ledger_writes, "submit", submit)


def make_key(amount: int) -> Any:
    allowance = AllowanceFactory(amount=Decimal(amount), prorate=False)
    _, raw = key_create(employee=allowance.employee, name="k", actor=None)
    return key_info_load(key_hash(raw))


def _reserve(info: Any) -> CallHold:
    held = asyncio.run(interface.reserve(info=info, estimate=ESTIMATE, min_output_tokens=1))
    assert isinstance(held, CallHold)
    return held


def test_a_record_the_database_cannot_store_is_written_with_safe_text_and_charged(
    inline_db: None,
) -> None:
    info = make_key(1000)
    held = _reserve(info)
    record = record_for(info, tokens=(10, 20))
    # A lone surrogate cannot be encoded by either database driver (nor NUL by PostgreSQL's).
    record.intent = "rev\ud800iew"
    record.error_type = "e\x00" + "x" * 200

    assert asyncio.run(write(held=held, record=record, charged=True)) is True

    stored = UsageRecord.objects.get()
    assert stored.request_id == record.request_id
    assert stored.intent == "rev\ufffdiew"
    assert stored.error_type == "e\ufffd" + "x" * 62
    assert (stored.input_tokens, stored.output_tokens, stored.cost) == (10, 20, record.cost)
    allowance = Allowance.objects.get()
    assert (allowance.used, allowance.reserved) == (30, 0), "charged once, hold gone"
    assert not Reservation.objects.exists()
    # A second close (any path asking again) changes nothing.
    assert asyncio.run(write(held=held, record=record, charged=True)) is False
    assert Allowance.objects.get(pk=allowance.pk).used == 30


def _call(info: Any) -> Call:
    route = SimpleNamespace(
        upstream_id=None,
        target=SimpleNamespace(kind="openai"),
        public_name="gpt-4o-mini",
        upstream_model="gpt-4o-mini",
        deployment=None,
    )
    parsed = ParsedRequest(endpoint="chat", model="gpt-4o-mini", body={}, stream=True)
    return Call(
        "req_" + uuid.uuid4().hex,
        time.perf_counter(),
        timezone.now(),
        "chat",
        info,
        parsed,
        route,
        SimpleNamespace(),
        ESTIMATE,
        "review",
    )


def test_a_hold_left_open_when_its_request_ends_is_given_back(inline_db: None) -> None:
    info = make_key(1000)
    held = _reserve(info)
    call = _call(info)
    owner = HoldOwner(call)

    async def request() -> None:
        owner.adopt(held)  # and then the request ends without closing it

    async def run() -> None:
        await asyncio.create_task(request())
        for _ in range(100):
            if owner.closing is not None:
                break
            await asyncio.sleep(0.01)
        assert owner.closing is not None, "the owner noticed its request ended"
        assert await owner.closing is True

    asyncio.run(run())
    record = UsageRecord.objects.get()
    assert (record.request_id, record.status_code, record.error_type) == (
        call.request_id,
        499,
        "client_closed",
    )
    assert (record.input_tokens, record.output_tokens, record.cost) == (0, 0, Decimal(0))
    allowance = Allowance.objects.get()
    assert (allowance.used, allowance.reserved) == (0, 0)
    assert not Reservation.objects.exists()


def test_only_the_first_close_runs(inline_db: None) -> None:
    info = make_key(1000)
    held = _reserve(info)
    call = _call(info)
    owner = HoldOwner(call)

    async def run() -> list[bool]:
        owner.adopt(held)
        first = owner.settle(record_for(info, tokens=(10, 5)))
        second = owner.release(status=500, error="internal_error")
        assert first is second
        return [await first]

    assert asyncio.run(run()) == [True]
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens) == (10, 5)
    allowance = Allowance.objects.get()
    assert (allowance.used, allowance.reserved) == (15, 0)
