"""Leaked Redis holds: which are provably dead (their process is gone), giving them back before
the 30-minute sweep, recomputing `reserved` from the open holds, and a reserve whose caller
left giving its hold back at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from metering.quota import clients, interface, keys, redis_backend, sweep
from metering.quota.reconcile import holds_reconcile
from metering.usage_stream import stream_drain
from tests.metering.test_quota_redis import (  # noqa: F401  (rds: fixture)
    ESTIMATE,
    counter,
    make_key,
    rds,
    record_for,
    reserve,
)


def owner_gone(client: redis.Redis) -> None:
    """As if this process had died: its liveness key lapses."""
    client.delete(keys.LIVE_PREFIX + clients.process_id())


def test_holds_of_a_gone_process_are_given_back_and_a_late_settle_charges_once(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    first, second = reserve(info), reserve(info)
    assert counter(rds, name) == {"used": 0, "reserved": 100}
    assert holds_reconcile().released == 0, "the owner is alive: its holds are live"
    assert counter(rds, name)["reserved"] == 100
    owner_gone(rds)
    repair = holds_reconcile()
    assert repair.released == 2 and repair.reserved == []
    assert counter(rds, name) == {"used": 0, "reserved": 0}
    assert rds.zcard(keys.HOLDS) == 0
    # The process was only cut off: its settle still charges, and gives nothing back twice.
    asyncio.run(interface.settle(held=first, record=record_for(info)))
    assert counter(rds, name) == {"used": 30, "reserved": 0}
    stream_drain(client=clients.sync_client())
    assert isinstance(second, redis_backend.RedisHold)


def test_holds_without_an_owner_wait_for_the_sweep(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    held = reserve(info)
    hold_key = f"tb:h:{held.hold.reservation_id.hex}"
    rds.hdel(hold_key, "p")  # taken by a version that did not record its owner
    owner_gone(rds)
    assert holds_reconcile().released == 0
    assert sweep.holds_sweep(now=10**10) == 1


def test_reserved_is_recomputed_from_the_open_holds(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    reserve(info)
    # A counter seeded again while a hold was open, then that hold closed: reserved went wrong.
    rds.hset(name, "reserved", -40)
    repair = holds_reconcile()
    assert repair.released == 0
    assert repair.reserved == [(name, -40, 50)]
    assert counter(rds, name) == {"used": 0, "reserved": 50}
    assert holds_reconcile().reserved == [], "nothing left to repair"
    rds.hset(name, "reserved", 7)
    missing = keys.allowance_counter(10**9)  # no such counter: left alone
    assert sweep.reserved_recompute([missing, name], chunk=1) == [(name, 7, 50)]
    assert not rds.exists(missing)


def test_a_hold_whose_caller_left_during_the_reserve_is_given_back(
    rds: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = make_key()
    name = keys.allowance_counter(info.limits.allowance_id)
    original = redis_backend.reserve

    async def run() -> None:
        taken = asyncio.Event()
        answer = asyncio.Event()

        async def slow_reserve(**kwargs: Any) -> Any:
            held = await original(**kwargs)  # the script ran in Redis...
            taken.set()
            await answer.wait()  # ...and its answer is still on its way when the client goes
            return held

        monkeypatch.setattr(redis_backend, "reserve", slow_reserve)
        call = asyncio.ensure_future(
            interface.reserve(info=info, estimate=ESTIMATE, min_output_tokens=1)
        )
        await taken.wait()
        assert counter(rds, name)["reserved"] == 50
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        answer.set()
        for _ in range(100):
            if counter(rds, name)["reserved"] == 0:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert counter(rds, name) == {"used": 0, "reserved": 0}
    assert rds.zcard(keys.HOLDS) == 0
    assert not rds.exists(keys.STREAM), "no usage record: the call never started"
