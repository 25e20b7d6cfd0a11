"""Token counting is rate-limited in the same per-minute windows as calls (real Redis)."""

from __future__ import annotations

import asyncio
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
