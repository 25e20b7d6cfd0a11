"""The hand-over between the Redis and database ledgers, against a real Redis: a retried
reserve holds once, seeding counts usage only, the database fallback counts what Redis held,
and what the fallback did reaches Redis when it is back; holds nobody has in hand (a reserve
whose answer was lost) are given back by the sweep.

Redis going away is a URL where nothing listens (the same process, the same hand-over state);
coming back is the real URL again."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
import redis
import time_machine

from budgets import ledger
from budgets.models import Allowance, Reservation
from metering.models import UsageRecord
from metering.quota import clients, down, interface, keys, redis_backend, sweep
from metering.quota.batch import BatchedScript
from metering.quota.handover import handover
from metering.quota.reconcile import holds_reconcile, quotas_reconcile
from metering.services import CallHold, call_reserve
from metering.usage_stream import stream_drain
from tests.metering.test_quota_redis import (  # noqa: F401  (rds: fixture)
    ESTIMATE,
    REDIS_URL,
    counter,
    make_key,
    rds,
    record_for,
)

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there


def redis_away(settings: Any) -> None:
    settings.REDIS_URL = NOWHERE
    clients._async_state = None
    down.redis_health.down_until = 0.0


def redis_back(settings: Any) -> None:
    settings.REDIS_URL = REDIS_URL
    clients._async_state = None
    down.redis_health.down_until = 0.0


async def reserve_async(info: Any, estimate: ledger.CallEstimate = ESTIMATE) -> Any:
    return await interface.reserve(info=info, estimate=estimate, min_output_tokens=1)


def test_a_reserve_run_twice_holds_once_and_answers_the_same(
    rds: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What redis-py's retry does when the first answer was lost on the way back."""
    info = make_key(requests_per_minute=100)
    original = BatchedScript.__call__
    answers = []

    async def twice(self: BatchedScript, keys: Any = (), args: Any = (), client: Any = None):
        first = await original(self, keys, args, client)
        second = await original(self, keys, args, client)
        answers.append((first, second))
        return second

    monkeypatch.setattr(BatchedScript, "__call__", twice)
    held = asyncio.run(reserve_async(info))
    assert isinstance(held, redis_backend.RedisHold)
    first, second = answers[0]
    assert first == second
    name = keys.allowance_counter(info.limits.allowance_id)
    assert counter(rds, name) == {"used": 0, "reserved": 50}, "held once"
    window = next(rds.scan_iter(match="tb:rl:e:*"))
    assert int(rds.hget(window, "n")) == 1, "counted once against the rate limit"
    assert held.amounts == (50,) and held.seen == (50,)
    assert rds.zcard(keys.HOLDS) == 1


def test_seeding_takes_usage_from_used_and_never_the_database_holds(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key(amount=1000)
    Allowance.objects.filter(pk=info.limits.allowance_id).update(used=Decimal(100))
    database_hold = call_reserve(info=info, estimate=ESTIMATE)  # a hold of the fallback
    assert isinstance(database_hold, CallHold)
    assert Allowance.objects.get(pk=info.limits.allowance_id).reserved == 50
    held = asyncio.run(reserve_async(info))
    assert isinstance(held, redis_backend.RedisHold)
    name = keys.allowance_counter(info.limits.allowance_id)
    assert counter(rds, name) == {"used": 100, "reserved": 50}, "only this Redis hold"
    assert quotas_reconcile(repair=False) == [], "the reconciliation agrees: used from used"


def test_the_fallback_counts_what_redis_held_when_it_went_away(
    rds: redis.Redis,  # noqa: F811
    settings: Any,
) -> None:
    info = make_key(amount=80)
    name = keys.allowance_counter(info.limits.allowance_id)

    async def run() -> tuple[Any, Any, Any]:
        in_redis = await reserve_async(info)  # 50 held in Redis, call still running
        redis_away(settings)
        on_database = await reserve_async(info)  # the database alone would allow 80
        refused = await reserve_async(info)
        return in_redis, on_database, refused

    in_redis, on_database, refused = asyncio.run(run())
    assert isinstance(in_redis, redis_backend.RedisHold)
    assert isinstance(on_database, CallHold)
    assert on_database.hold.output_tokens == 20 and on_database.hold.tokens == 30
    assert on_database.hold.remaining == 0
    assert isinstance(refused, ledger.Refusal) and refused.available == 0 and refused.waitable
    assert Reservation.objects.count() == 1, "the refusal wrote nothing"
    assert Allowance.objects.get(pk=info.limits.allowance_id).reserved == 30
    assert counter(rds, name) == {"used": 0, "reserved": 50}


def test_a_redis_hold_settled_on_the_database_frees_its_room_and_reaches_redis_later(
    rds: redis.Redis,  # noqa: F811
    settings: Any,
) -> None:
    info = make_key(amount=100)
    name = keys.allowance_counter(info.limits.allowance_id)
    first, second = record_for(info), record_for(info, tokens=(10, 30))

    async def away() -> Any:
        held = await reserve_async(info)  # 50 held
        other = await reserve_async(info)  # 50 held: Redis is full
        redis_away(settings)
        await interface.settle(held=held, record=first)  # 30 charged on the database
        # The database knows 30 used; Redis still holds `other`'s 50: 20 left.
        fallback = await reserve_async(info)
        return other, fallback

    other, fallback = asyncio.run(away())
    assert isinstance(fallback, CallHold) and fallback.hold.tokens == 20
    assert UsageRecord.objects.get().request_id == first.request_id
    assert counter(rds, name) == {"used": 0, "reserved": 100}, "Redis has not heard yet"

    redis_back(settings)

    async def back() -> None:
        await handover.sync()
        assert counter(rds, name) == {"used": 30, "reserved": 70}, "settled; fallback adopted"
        await interface.settle(held=other, record=second)
        await interface.settle(held=fallback, record=record_for(info, tokens=(10, 5)))

    asyncio.run(back())
    assert counter(rds, name) == {"used": 85, "reserved": 0}
    assert not handover.closes and not clients.open_holds
    assert stream_drain(client=clients.sync_client()) == 1, "only the one Redis settle"
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert allowance.used == 85 and allowance.reserved == 0
    assert UsageRecord.objects.count() == 3
    assert quotas_reconcile(repair=False) == [], "Redis and the database agree exactly"
    assert holds_reconcile().reserved == []


def test_a_database_hold_closed_while_redis_is_still_away_is_charged_in_redis_later(
    rds: redis.Redis,  # noqa: F811
    settings: Any,
) -> None:
    info = make_key(amount=1000)
    name = keys.allowance_counter(info.limits.allowance_id)
    asyncio.run(reserve_async(info))  # seeds the counter; this hold stays open
    redis_away(settings)

    async def away() -> None:
        held = await reserve_async(info)
        assert isinstance(held, CallHold)
        await interface.settle(held=held, record=record_for(info, tokens=(10, 12)))

    asyncio.run(away())
    assert counter(rds, name) == {"used": 0, "reserved": 50}
    redis_back(settings)
    asyncio.run(handover.sync())
    assert counter(rds, name) == {"used": 22, "reserved": 50}
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 22
    stream_drain(client=clients.sync_client())
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 22, "not charged twice"
    assert UsageRecord.objects.count() == 1


def test_a_hold_whose_answer_was_lost_is_given_back_by_the_process_and_by_the_sweep(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    held = asyncio.run(reserve_async(info))
    # As if Redis ran the reserve but its answer never came back: the process does not have
    # the hold in hand.
    clients.open_holds.discard(held.key)
    client = clients.sync_client()

    async def beat() -> None:
        redis_client, _ = clients.async_client()
        await clients.beat(redis_client, clients.process_id())

    asyncio.run(beat())  # the list is made in the same second as the hold: not judged yet
    assert sweep.holds_release_dead() == 0
    assert counter(rds, name)["reserved"] == 50
    with time_machine.travel(time.time() + 2, tick=False):
        asyncio.run(beat())
    assert rds.exists(keys.LIVE_PREFIX + clients.process_id()), "the owner is alive"
    repair = holds_reconcile()  # what `reconcile_quotas` and the minute sweep run
    assert repair.released == 1
    assert counter(rds, name) == {"used": 0, "reserved": 0}
    assert rds.zcard(keys.HOLDS) == 0
    assert not client.exists(keys.STREAM)


def test_holds_in_hand_are_never_taken_as_orphans(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    asyncio.run(reserve_async(info))

    async def beat() -> None:
        redis_client, _ = clients.async_client()
        await clients.beat(redis_client, clients.process_id())

    with time_machine.travel(time.time() + 60, tick=False):
        asyncio.run(beat())
    assert sweep.holds_release_dead() == 0
    assert counter(rds, name)["reserved"] == 50


def test_a_reserve_redis_never_answered_is_given_back_when_redis_answers_again(
    rds: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    asyncio.run(reserve_async(info))  # seeds the counter; this hold stays open
    original = BatchedScript.__call__
    lost = []

    async def lose(self: BatchedScript, keys: Any = (), args: Any = (), client: Any = None):
        answer = await original(self, keys, args, client)
        if not lost and self is clients._async_state.scripts["reserve"]:
            lost.append(keys[0])
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    monkeypatch.setattr(BatchedScript, "__call__", lose)

    async def run() -> Any:
        first = await reserve_async(info)  # taken in Redis, answer lost: database fallback
        assert counter(rds, name)["reserved"] == 100
        assert down.redis_health.degraded
        assert clients.uncertain_holds == {lost[0]}
        down.redis_health.down_until = 0.0
        second = await reserve_async(info)  # Redis answers again: the lost hold goes first
        return first, second

    first, second = asyncio.run(run())
    assert isinstance(first, CallHold), "the caller was served from the database"
    assert isinstance(second, redis_backend.RedisHold)
    # The lost hold given back, the database hold adopted, the new hold in: 3 x 50.
    assert counter(rds, name) == {"used": 0, "reserved": 150}
    assert rds.hget(lost[0], "s") == b"x"
    assert not clients.uncertain_holds
