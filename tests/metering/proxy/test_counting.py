"""Token counting is rate-limited in the same per-minute windows as calls (real Redis)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metering.proxy import counting
from metering.proxy.errors import ProxyError
from metering.quota import redis_backend
from tests.metering.test_quota_redis import make_key, rds, reserve  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def count_check(info: Any) -> None:
    asyncio.run(counting.rate_check(info))


def test_counts_and_calls_share_the_requests_per_minute(rds: Any) -> None:  # noqa: F811
    info = make_key(requests_per_minute=3)
    assert isinstance(reserve(info), redis_backend.RedisHold)
    count_check(info)
    count_check(info)
    with pytest.raises(ProxyError) as caught:
        count_check(info)
    assert (caught.value.status, caught.value.code) == (429, "rate_limit_requests")
    assert 1 <= caught.value.retry_after <= 60
    assert isinstance(reserve(info), redis_backend.RateLimited)  # the counts filled the window


def test_without_a_rate_limit_counting_touches_no_window(rds: Any) -> None:  # noqa: F811
    info = make_key()
    for _ in range(5):
        count_check(info)
    assert not rds.keys("tb:rl:*")


def test_gemini_counts_share_the_window_too(rds: Any) -> None:  # noqa: F811
    """countTokens on the Gemini surface counts in the same windows (here for an OpenAI
    route: counted locally, marked an estimate), and a full window refuses it."""
    from budgets.models import Allowance
    from metering import cache
    from metering.models import ModelRoute, Upstream, UsageRecord
    from metering.providers import gemini

    upstream = Upstream.objects.create(name="up", kind="openai", base_url="http://127.0.0.1:9")
    ModelRoute.objects.create(public_name="gpt-4o-mini", upstream=upstream, upstream_model="m")
    cache.routes.invalidate()
    info = make_key(requests_per_minute=2)
    body = b'{"contents": [{"parts": [{"text": "Count me."}]}]}'

    def count() -> tuple:
        return asyncio.run(counting.count_gemini({}, body, "gpt-4o-mini", info, "req_1"))

    status, headers, answer = count()
    expected = counting.local_count(gemini.parse_count_request(gemini.COUNT_ENDPOINT, body))
    assert (status, json.loads(answer)) == (200, {"totalTokens": expected})
    assert (counting.ESTIMATED_HEADER, "true") in headers
    count()
    with pytest.raises(ProxyError) as caught:
        count()
    assert (caught.value.status, caught.value.code) == (429, "rate_limit_requests")
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert (allowance.used, allowance.reserved) == (0, 0)
    assert not UsageRecord.objects.exists()
