"""Usage events on the wire and their ingestion: the COPY-line format, events of other versions,
duplicates in one batch, the set-based ledger updates, and parallel consumers.

Runs on SQLite and on PostgreSQL (the COPY path); needs a real Redis like test_quota_redis."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
import uuid
from decimal import Decimal

import redis
from django.core.management import call_command
from django.utils import timezone

from budgets.models import Allowance, CostCenterSpend
from metering.models import UsageDeadLetter, UsageRecord, VirtualKey
from metering.quota import clients, keys
from metering.selectors import KeyInfo
from metering.usage_stream import (
    FORMAT,
    Charge,
    UsageEvent,
    event_decode,
    event_encode,
    format_names,
    group_ensure,
    stream_drain,
    usage_events_apply,
)
from tests.metering.test_quota_redis import make_key, rds  # noqa: F401  (fixture)

AWKWARD = "tab\there, new\nline, cr\r, back\\slash, \\N, \\., ünïcode ✓"


def event_for(info: KeyInfo, **values: object) -> UsageEvent:
    record = UsageRecord(
        request_id="req_" + uuid.uuid4().hex,
        created_at=timezone.now(),
        employee_id=info.employee_id,
        key_id=info.key_id,
        cost_center_id=info.cost_center_id,
        model="gpt-4o-mini",
        endpoint="chat",
        input_tokens=10,
        output_tokens=20,
        cost=Decimal("0.0000123456"),
        status_code=200,
        **values,
    )
    charge = Charge(
        allowance_id=info.limits.allowance_id,
        unit="tokens",
        amount=Decimal(30),
        cost=Decimal("0.0000123456"),
        cost_center_ids=(info.cost_center_id,),
        fiscal_year=info.limits.fiscal_year,
        key_id=info.key_id,
        key_tokens=30,
    )
    return UsageEvent.of(record, charge)


def push(client: redis.Redis, payloads: list[str | bytes]) -> None:
    group_ensure(client)
    for payload in payloads:
        client.xadd(keys.STREAM, {"e": payload})


def test_the_wire_form_round_trips_awkward_text_exactly() -> None:
    record = UsageRecord(
        request_id="req_1",
        created_at=dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
        employee_id=1,
        cost_center_id=2,
        model=AWKWARD,
        endpoint="chat",
        error_type="\\",
        ttft_ms=None,
        cost=Decimal("0.0000000001"),
        status_code=200,
        streamed=True,
        input_tokens=12,
    )
    charge = Charge(None, "usd", Decimal("1E-10"), Decimal("0"), (3, 7), 2026, None, 0)
    event = UsageEvent.of(record, charge)
    line = event_encode(event)
    assert "\n" not in line and "\r" not in line and line.startswith(FORMAT + "\t")
    decoded = event_decode(line.encode())
    assert decoded.values == event.values
    assert decoded.charge == Charge(
        None, "usd", Decimal("1E-10"), Decimal(0), (3, 7), 2026, None, 0
    )


def test_awkward_values_reach_the_database_exactly(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    event = event_for(info, intent=AWKWARD, error_type="x\\ty", ttft_ms=None, streamed=True)
    push(rds, [event_encode(event)])
    assert stream_drain(client=clients.sync_client()) == 1
    record = UsageRecord.objects.get()
    assert record.intent == AWKWARD and record.error_type == "x\\ty"
    assert record.ttft_ms is None and record.streamed is True
    assert record.cost == Decimal("0.0000123456")
    assert record.created_at == event.values["created_at"]


def test_a_batch_charges_each_new_record_once_and_sums_per_row(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=10_000)
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    VirtualKey.objects.filter(pk=info.key_id).update(cap_tokens=10_000)
    events = [event_for(info) for _ in range(5)]
    assert usage_events_apply(events=events[:2]) == 2
    # Already recorded (2), new (3), and one of the new ones twice in the same batch.
    batch = [*events, events[4]]
    push(rds, [event_encode(e) for e in batch])
    assert stream_drain(client=clients.sync_client()) == 3
    assert UsageRecord.objects.count() == 5
    allowance.refresh_from_db()
    assert allowance.used == 150, "five calls of 30 tokens, each charged once"
    assert VirtualKey.objects.get(pk=info.key_id).used_tokens == 150
    spend = CostCenterSpend.objects.get(cost_center_id=info.cost_center_id)
    assert spend.spent == Decimal("0.0000617280") and spend.reserved == 0
    assert rds.xpending(keys.STREAM, keys.GROUP)["pending"] == 0


def test_a_duplicate_within_one_direct_batch_is_charged_once(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    event = event_for(info)
    assert usage_events_apply(events=[event, event]) == 1
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30


def _legacy_json(event: UsageEvent) -> str:
    """An event as versions before the COPY-line form wrote it."""
    record = {
        name: value.isoformat()
        if isinstance(value, dt.datetime)
        else str(value)
        if isinstance(value, Decimal)
        else value
        for name, value in event.values.items()
    }
    c = event.charge
    charge = [c.allowance_id, c.unit, str(c.amount), str(c.cost)]
    charge += [list(c.cost_center_ids), c.fiscal_year, c.key_id, c.key_tokens]
    return json.dumps({"r": record, "c": charge}, separators=(",", ":"))


def test_events_of_other_versions_are_read(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    legacy, older, current = event_for(info), event_for(info), event_for(info)
    # A version whose records had no `intent` column and an extra one this version dropped.
    tag, names = "u1.0ldversion00", format_names()[1].replace(",intent", "") + ",gone"
    rds.hset(keys.FORMATS, tag, names)
    cells = event_encode(older).split("\t")
    values = dict(zip(format_names()[1].split(","), cells[1:], strict=False))
    old_cells = [values.get(n, "dropped") for n in names.split(",")]
    old_line = "\t".join([tag, *old_cells, *cells[1 + len(values) :]])
    push(rds, [_legacy_json(legacy), old_line, event_encode(current)])
    assert stream_drain(client=clients.sync_client()) == 3
    ids = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert ids == {legacy.request_id, older.request_id, current.request_id}
    assert UsageRecord.objects.get(request_id=older.request_id).intent == "", "model default"
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 90


def test_an_event_of_an_unknown_format_waits_as_a_dead_letter_not_as_a_stop(
    rds: redis.Redis,  # noqa: F811
) -> None:
    # It used to stop the batch unacknowledged, and so every consumer for ever after; it now
    # waits, unapplied, for its format to be known (see test_usage_poison for the replay).
    info = make_key()
    line = event_encode(event_for(info)).replace(FORMAT, "u1.unregistered0", 1)
    push(rds, [line])
    assert stream_drain(client=clients.sync_client()) == 0
    assert not UsageRecord.objects.exists()
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 0, "nothing charged yet"
    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.UNAPPLIED and "unknown format" in letter.error
    assert bytes(letter.payload) == line.encode()
    assert rds.xpending(keys.STREAM, keys.GROUP)["pending"] == 0


def test_parallel_consumers_record_everything_once(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=100_000)
    events = [event_for(info) for _ in range(300)]
    push(rds, [event_encode(e) for e in events])
    out = io.StringIO()
    call_command("consume_usage", once=True, processes=2, batch=40, stdout=out)
    assert out.getvalue().startswith("300 usage records written")
    assert UsageRecord.objects.count() == 300
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 9000
    assert rds.xpending(keys.STREAM, keys.GROUP)["pending"] == 0


def test_a_consumer_told_to_stop_writes_the_batch_it_read_ahead(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=100_000)
    push(rds, [event_encode(event_for(info)) for _ in range(100)])
    written = stream_drain(
        client=clients.consumer_client(200),
        batch=10,
        block_ms=200,
        until_empty=False,
        stop=lambda: UsageRecord.objects.exists(),
    )
    # The first batch, and the one read while it was written; nothing left delivered and
    # unacknowledged.
    assert written == 20 == UsageRecord.objects.count()
    assert rds.xpending(keys.STREAM, keys.GROUP)["pending"] == 0
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 600


def test_a_consumer_recreates_a_deleted_stream_group_and_goes_on(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=100_000)
    push(rds, [event_encode(event_for(info))])
    rounds = {"n": 0}

    def stop() -> bool:
        rounds["n"] += 1
        if rounds["n"] == 3:  # once the first event is in: the stream and its group vanish
            rds.delete(keys.STREAM)
            rds.xadd(keys.STREAM, {"e": event_encode(event_for(info))})
        return UsageRecord.objects.count() >= 2 or rounds["n"] > 50

    written = stream_drain(
        client=clients.consumer_client(100),
        batch=10,
        block_ms=100,
        until_empty=False,
        stop=stop,
    )
    assert written == 2 == UsageRecord.objects.count()


def _batches_seen(monkeypatch) -> list[int]:
    """The sizes of the batches a drain applies (the real application, watched)."""
    from metering.usage_stream import consumer

    seen: list[int] = []
    real = consumer.stream_entries_apply

    def watched(client: redis.Redis, raw: list) -> int:
        seen.append(len(raw))
        return real(client, raw)

    monkeypatch.setattr(consumer, "stream_entries_apply", watched)
    return seen


def test_a_running_consumer_lingers_so_calls_close_together_share_a_batch(
    rds: redis.Redis,  # noqa: F811
    monkeypatch,
) -> None:
    info = make_key(amount=100_000)
    seen = _batches_seen(monkeypatch)
    push(rds, [event_encode(event_for(info))])
    later = threading.Timer(0.2, lambda: push(rds, [event_encode(event_for(info))]))
    later.start()
    started = time.monotonic()
    written = stream_drain(
        client=clients.consumer_client(100),
        batch=10,
        block_ms=100,
        until_empty=False,
        linger_ms=1000,
        stop=lambda: UsageRecord.objects.count() >= 2 or time.monotonic() - started > 10,
    )
    later.join()
    assert written == 2 == UsageRecord.objects.count()
    assert [n for n in seen if n] == [2], "the second call arrived within the linger"
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60
    assert rds.xpending(keys.STREAM, keys.GROUP)["pending"] == 0


def test_a_full_batch_is_written_without_lingering(rds: redis.Redis, monkeypatch) -> None:  # noqa: F811
    info = make_key(amount=100_000)
    seen = _batches_seen(monkeypatch)
    push(rds, [event_encode(event_for(info)) for _ in range(10)])
    started = time.monotonic()
    written = stream_drain(
        client=clients.consumer_client(100),
        batch=10,
        block_ms=100,
        until_empty=False,
        linger_ms=5000,
        stop=lambda: UsageRecord.objects.count() >= 10 or time.monotonic() - started > 20,
    )
    assert written == 10 and seen[0] == 10
    assert time.monotonic() - started < 4, "a full batch does not wait for more"


def test_a_drain_until_empty_never_lingers(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=100_000)
    push(rds, [event_encode(event_for(info))])
    started = time.monotonic()
    assert stream_drain(client=clients.sync_client(), linger_ms=5000) == 1
    assert time.monotonic() - started < 4
