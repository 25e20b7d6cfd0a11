"""Poison events on the usage stream: a NUL, a lone surrogate, text too long for its column, an
unknown format, an event that is not an event at all. None of them may stop ingestion, lose a
good event of the same batch, or lose a charge; each leaves a dead letter with its error and
its original bytes.

Runs on SQLite and on PostgreSQL (the COPY path, where one bad line fails the whole COPY);
needs a real Redis like test_quota_redis."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
import redis
from django.core.management import call_command

from budgets.models import Allowance, CostCenterSpend
from metering.models import UsageDeadLetter, UsageRecord, VirtualKey
from metering.quota import clients, keys
from metering.usage_stream import (
    FORMAT,
    Charge,
    UsageEvent,
    dead_letter_counts,
    event_encode,
    stream_drain,
)
from tests.metering.test_quota_redis import make_key, rds  # noqa: F401  (fixture)
from tests.metering.test_usage_ingest import _legacy_json, event_for, push


def drain() -> int:
    return stream_drain(client=clients.sync_client())


def pending(client: redis.Redis) -> int:
    return client.xpending(keys.STREAM, keys.GROUP)["pending"]


def nul_line(info: object, intent: str = "summarise\x00 me") -> tuple[str, bytes]:
    """A current-format event whose intent carries a NUL, as a producer without input checks
    would append it (redis-py passes the NUL byte through)."""
    event = event_for(info, intent=intent)
    return event.request_id, event_encode(event).encode()


def surrogate_line(info: object) -> tuple[str, bytes]:
    """A lone surrogate reaching the stream as UTF-8-encoded bytes (what a producer encoding
    with 'surrogatepass' writes): not valid UTF-8 for PostgreSQL nor for Python's codec."""
    event = event_for(info, intent="tag-\ud800-x")
    return event.request_id, event_encode(event).encode("utf-8", "surrogatepass")


def test_a_nul_in_the_intent_does_not_stop_the_consumer_nor_lose_the_batch(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key(amount=10_000)
    VirtualKey.objects.filter(pk=info.key_id).update(cap_tokens=10_000)
    before, after = event_for(info), event_for(info)
    poison_id, poison = nul_line(info)
    push(rds, [event_encode(before), poison, event_encode(after)])

    assert drain() == 3, "the two good events and the poison one, written with escaped text"
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert set(records) == {before.request_id, poison_id, after.request_id}
    assert records[poison_id].intent == "summarise\\x00 me"
    assert records[before.request_id].intent == "" == records[after.request_id].intent
    # Every charge is in the database ledger once, the poison one's too.
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 90
    assert VirtualKey.objects.get(pk=info.key_id).used_tokens == 90
    spend = CostCenterSpend.objects.get(cost_center_id=info.cost_center_id)
    assert spend.spent == Decimal("0.0000370368")
    assert pending(rds) == 0, "all three acknowledged"

    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.WRITTEN
    assert letter.request_id == poison_id
    assert bytes(letter.payload) == poison, "the original bytes are kept"
    assert "NUL" in letter.error and "intent" in letter.error


def test_a_restarted_consumer_does_not_trip_on_the_same_entry_again(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key(amount=10_000)
    _, poison = nul_line(info)
    push(rds, [poison])
    assert drain() == 1
    good = event_for(info)
    push(rds, [event_encode(good)])
    assert drain() == 1, "the next consumer run carries on with what came after"
    assert UsageRecord.objects.count() == 2
    assert UsageDeadLetter.objects.count() == 1
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60


def test_a_lone_surrogate_is_written_escaped_and_dead_lettered(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=10_000)
    good = event_for(info)
    poison_id, poison = surrogate_line(info)
    legacy = event_for(info)
    # A JSON event of an earlier version: "\ud800" is a valid JSON escape, a lone surrogate
    # once parsed.
    legacy_json = _legacy_json(legacy).replace('"intent":""', '"intent":"a\\ud800b"')
    assert "\\ud800" in legacy_json
    push(rds, [poison, event_encode(good), legacy_json])
    assert drain() == 3
    records = {r.request_id: r.intent for r in UsageRecord.objects.all()}
    assert records == {
        poison_id: "tag-\\ud800-x",
        good.request_id: "",
        legacy.request_id: "a\\ud800b",
    }
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 90
    letters = {d.request_id: d for d in UsageDeadLetter.objects.all()}
    assert set(letters) == {poison_id, legacy.request_id}
    assert all(d.state == UsageDeadLetter.State.WRITTEN for d in letters.values())
    assert bytes(letters[poison_id].payload) == poison
    assert pending(rds) == 0


def test_text_too_long_for_its_column_is_cut_and_dead_lettered(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=10_000)
    good = event_for(info)
    long = event_for(info, intent="i" * 150)  # the column holds 100
    push(rds, [event_encode(good), event_encode(long)])
    assert drain() == 2
    assert UsageRecord.objects.get(request_id=long.request_id).intent == "i" * 100
    assert UsageRecord.objects.get(request_id=good.request_id).intent == ""
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60
    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.WRITTEN and "intent" in letter.error


def test_an_event_that_cannot_be_written_is_held_unapplied_and_replayed_after_a_fix(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key(amount=10_000)
    good = event_for(info)
    foreign = event_encode(event_for(info)).replace(FORMAT, "u1.unregistered0", 1)
    push(rds, [foreign, b"not an event", event_encode(good)])
    assert drain() == 1, "the good event is written; the others wait as dead letters"
    assert UsageRecord.objects.get().request_id == good.request_id
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30
    assert pending(rds) == 0, "the consumer is not stuck on them"
    letters = list(UsageDeadLetter.objects.order_by("id"))
    assert [d.state for d in letters] == [UsageDeadLetter.State.UNAPPLIED] * 2
    assert "unknown format" in letters[0].error
    assert bytes(letters[1].payload) == b"not an event"

    # Nothing to replay them with yet: they stay, nothing is written.
    out = io.StringIO()
    call_command("replay_dead_letters", stdout=out)
    assert "0 replayed, 2 still failing" in out.getvalue()
    assert UsageRecord.objects.count() == 1

    # The fix: the producer's format is registered (as a producer of that version does).
    rds.hset(keys.FORMATS, "u1.unregistered0", ",".join(_names()))
    call_command("replay_dead_letters", stdout=out)
    assert "1 replayed, 1 still failing" in out.getvalue()
    assert UsageRecord.objects.count() == 2
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60
    replayed = UsageDeadLetter.objects.get(pk=letters[0].pk)
    assert replayed.state == UsageDeadLetter.State.REPLAYED and replayed.resolved_at is not None

    # Replaying again charges nothing twice.
    UsageDeadLetter.objects.filter(pk=replayed.pk).update(state=UsageDeadLetter.State.UNAPPLIED)
    call_command("replay_dead_letters", stdout=out)
    assert UsageRecord.objects.count() == 2
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60


def _names() -> list[str]:
    from metering.usage_stream import format_names

    return format_names()[1].split(",")


def test_a_redelivered_poison_entry_leaves_one_dead_letter(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key(amount=10_000)
    _, poison = nul_line(info)
    push(rds, [poison])
    assert drain() == 1
    # The same entry again (a consumer that died after its commit, before XACK): nothing new.
    entry_id = UsageDeadLetter.objects.get().entry_id
    rds.xadd(keys.STREAM, {"e": poison}, id="*")
    from metering.usage_stream.consumer import stream_entries_apply

    stream_entries_apply(clients.sync_client(), [(entry_id.encode(), {b"e": poison})])
    assert UsageDeadLetter.objects.count() == 1
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30


@pytest.mark.parametrize("position", [0, 7, 19])
def test_one_bad_event_anywhere_in_a_batch_costs_no_good_one(
    rds: redis.Redis,  # noqa: F811
    position: int,
) -> None:
    info = make_key(amount=100_000)
    lines: list[str | bytes] = [event_encode(event_for(info)) for _ in range(20)]
    lines[position] = nul_line(info)[1]
    push(rds, lines)
    assert drain() == 20
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 600
    assert UsageDeadLetter.objects.count() == 1


def test_the_dead_letter_error_and_request_id_are_storable_text(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    event = event_for(info, intent="x")
    line = event_encode(event).replace(event.request_id, "req_\x00bad", 1).encode()
    push(rds, [line])
    assert drain() == 1
    letter = UsageDeadLetter.objects.get()
    assert letter.request_id == "req_\\x00bad"
    assert UsageRecord.objects.get().request_id == "req_\\x00bad"
    json.dumps(letter.error)  # plain text


def test_an_event_for_a_row_that_is_gone_waits_unapplied_and_the_rest_is_written(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key(amount=10_000)
    goods = [event_for(info) for _ in range(5)]
    orphan = event_for(info)
    orphan.values["employee_id"] = 999_999  # no such employee: the foreign key refuses it
    lines = [event_encode(e) for e in goods]
    lines.insert(3, event_encode(orphan))
    push(rds, lines)
    assert drain() == 5
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {
        e.request_id for e in goods
    }
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 150
    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.UNAPPLIED
    assert letter.request_id == orphan.request_id
    assert "IntegrityError" in letter.error or "ForeignKeyViolation" in letter.error
    assert pending(rds) == 0
    assert dead_letter_counts() == {"written": 0, "unapplied": 1, "replayed": 0}


def test_admins_see_dead_letters_and_replay_them_from_the_admin(rds: redis.Redis) -> None:  # noqa: F811
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    info = make_key(amount=10_000)
    foreign = event_encode(event_for(info)).replace(FORMAT, "u1.unregistered0", 1)
    _, poison = nul_line(info)
    push(rds, [foreign, poison])
    assert drain() == 1
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    browser = Client()
    browser.force_login(admin)
    page = browser.get(reverse("admin:metering_usagedeadletter_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "unknown format" in text and "intent: NUL escaped" in text
    letter = UsageDeadLetter.objects.get(state=UsageDeadLetter.State.WRITTEN)
    detail = browser.get(reverse("admin:metering_usagedeadletter_change", args=[letter.pk]))
    assert detail.status_code == 200 and "summarise\\x00 me" in detail.content.decode()

    rds.hset(keys.FORMATS, "u1.unregistered0", ",".join(_names()))
    unapplied = UsageDeadLetter.objects.get(state=UsageDeadLetter.State.UNAPPLIED)
    answer = browser.post(
        reverse("admin:metering_usagedeadletter_changelist"),
        {"action": "replay", "_selected_action": [unapplied.pk]},
        follow=True,
    )
    assert "1 replayed, 0 still failing, 1 usage records written." in answer.content.decode()
    assert UsageRecord.objects.count() == 2
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60


def test_readiness_and_metrics_show_dead_letters_without_failing(rds: redis.Redis) -> None:  # noqa: F811
    from metering import metrics, ops

    info = make_key()
    push(rds, [b"not an event", nul_line(info)[1]])
    assert drain() == 1
    assert ops._dead_letters() == {"written": 1, "unapplied": 1, "replayed": 0}
    body = metrics.render()[0].decode()
    assert 'tokenbudget_usage_dead_letters{state="unapplied"} 1.0' in body
    assert 'tokenbudget_usage_dead_letters{state="written"} 1.0' in body


def test_a_raw_line_break_from_a_careless_producer_is_read_not_split(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    event = event_for(info, intent="two\nlines")
    line = event_encode(event).replace("two\\nlines", "two\nlines", 1)
    assert "\n" in line
    push(rds, [line, event_encode(event_for(info))])
    assert drain() == 2
    assert UsageRecord.objects.get(request_id=event.request_id).intent == "two\nlines"
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 60
    assert not UsageDeadLetter.objects.exists(), "nothing was wrong with its content"


def test_reconciliation_keeps_the_charges_of_unapplied_dead_letters_in_the_counters(
    rds: redis.Redis,  # noqa: F811
) -> None:
    from metering.quota.reconcile import quotas_reconcile

    info = make_key(amount=10_000)
    foreign = event_encode(event_for(info)).replace(FORMAT, "u1.unregistered0", 1)
    push(rds, [foreign, b"not an event"])
    assert drain() == 0
    # The close script charged the counter when it appended the event.
    counter = keys.allowance_counter(info.limits.allowance_id)
    rds.hset(counter, mapping={"used": 30, "reserved": 0})
    assert quotas_reconcile(repair=True) == [], "30 waits in a dead letter: no drift"
    assert rds.hget(counter, "used") == b"30"

    rds.hset(keys.FORMATS, "u1.unregistered0", ",".join(_names()))
    call_command("replay_dead_letters", stdout=io.StringIO())
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30
    assert quotas_reconcile(repair=True) == [], "now in the database: still no drift"
    assert rds.hget(counter, "used") == b"30"

    # Without the letter the same counter is drift, repaired to the database's value.
    rds.hset(counter, "used", 45)
    [drift] = quotas_reconcile(repair=True)
    assert (drift.counter, drift.redis_used, drift.database_used) == (counter, 45, 30)


def test_bytes_that_are_not_utf8_are_escaped_byte_by_byte(rds: redis.Redis) -> None:  # noqa: F811
    info = make_key()
    event = event_for(info, intent="aXb")
    line = event_encode(event).encode().replace(b"aXb", b"a\xff\xfeb", 1)
    push(rds, [line])
    assert drain() == 1
    assert UsageRecord.objects.get().intent == "a\\xff\\xfeb"
    letter = UsageDeadLetter.objects.get()
    assert bytes(letter.payload) == line and "lone surrogate" in letter.error


def test_the_repair_changes_only_what_cannot_be_stored() -> None:
    from metering.usage_stream.poison import event_repair, payload_clean, text_storable
    from tests.metering.test_usage_ingest import AWKWARD

    assert text_storable(AWKWARD) == AWKWARD, "tabs, line breaks, backslashes are storable"
    assert text_storable("a\x00b\ud800c\udfffd") == "a\\x00b\\ud800c\\udfffd"
    assert payload_clean("ünïcode ✓\tx".encode()) is True
    assert payload_clean(b"a\x00") is payload_clean(b"a\n") is payload_clean(b"\xff") is False
    assert payload_clean(b"one\ntwo", lines=2) is True
    event = UsageEvent.of(
        UsageRecord(request_id="r", model="m" * 201, intent="ok", endpoint="chat"),
        Charge(1, "tokens", Decimal(3), Decimal(0), (), 2026, None, 0),
    )
    repaired, problems = event_repair(event)
    assert problems == ["model: cut from 201 to 200 characters"]
    assert repaired.values["model"] == "m" * 200 and repaired.values["intent"] == "ok"
    assert repaired.charge == event.charge
    assert event_repair(repaired) == (repaired, [])


def test_an_event_of_another_version_refused_by_the_database_says_why(
    rds: redis.Redis,  # noqa: F811
) -> None:
    info = make_key()
    orphan = event_for(info)
    orphan.values["employee_id"] = 999_999
    rds.hset(keys.FORMATS, "u1.othertag0000", ",".join(_names()))
    other = event_encode(orphan).replace(FORMAT, "u1.othertag0000", 1)
    push(rds, [_legacy_json(event_for(info)), other, event_encode(event_for(info))])
    assert drain() == 2
    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.UNAPPLIED
    assert "the database refused it" in letter.error and "unknown format" not in letter.error


@pytest.mark.parametrize(
    "tokens", [{"x": 1}, "many", -5], ids=["an object", "a word", "a negative number"]
)
def test_a_json_event_with_a_number_that_is_not_one_waits_unapplied(
    rds: redis.Redis,  # noqa: F811
    tokens: object,
) -> None:
    info = make_key()
    bad, good = event_for(info), event_for(info)
    data = json.loads(_legacy_json(bad))
    data["r"]["input_tokens"] = tokens
    push(rds, [json.dumps(data), event_encode(good)])
    assert drain() == 1
    assert UsageRecord.objects.get().request_id == good.request_id
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30
    letter = UsageDeadLetter.objects.get()
    assert letter.state == UsageDeadLetter.State.UNAPPLIED
    assert pending(rds) == 0
