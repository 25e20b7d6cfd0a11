"""Dead letters: the counts operations show, and the replay of the ones not yet applied."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from metering.models import UsageDeadLetter
from metering.quota import clients, keys
from metering.quota.units import to_units
from metering.usage_stream.apply import _totals
from metering.usage_stream.events import charge_decode
from metering.usage_stream.intake import _UNREADABLE, entries_apply, entries_prepare
from metering.usage_stream.poison import payload_text


def dead_letter_counts() -> dict[str, int]:
    """Dead letters by state (every state present, zeros included)."""
    counts = dict.fromkeys(UsageDeadLetter.State.values, 0)
    rows = UsageDeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by()
    for state, n in rows:
        counts[state] = n
    return counts


def dead_letters_waiting_units() -> dict[str, int]:
    """What the unapplied dead letters charged each Redis counter (counter name -> Redis
    units), for those whose charge can be read. The Redis counters have these charges and the
    database does not yet: the reconciliation counts them, so it does not hand that budget back
    while the letters wait for a replay."""
    charges = []
    letters = UsageDeadLetter.objects.filter(state=UsageDeadLetter.State.UNAPPLIED)
    for payload in letters.values_list("payload", flat=True):
        try:
            charges.append(charge_decode(payload_text(bytes(payload))))
        except _UNREADABLE:
            continue  # not an event at all: nothing was charged that can be known
    totals = _totals(charges)
    units = {keys.key_counter(k): n for k, n in totals.keys.items()}
    for charge in charges:  # an allowance's unit is its charges' unit
        if charge.allowance_id in totals.allowances:
            name = keys.allowance_counter(charge.allowance_id)
            amount = totals.allowances[charge.allowance_id]
            units[name] = to_units(amount, charge.unit, up=True)
    for (year, center), cost in totals.spends.items():
        units[keys.cost_center_counter(center, year)] = to_units(cost, "usd", up=True)
    return units


@dataclass(frozen=True)
class Replay:
    replayed: int  # now in the database (records written, or found already there)
    failing: int  # still cannot be written; their error says why
    new: int  # records written by this replay


def dead_letters_replay(
    *, ids: list[int] | None = None, client: redis.Redis | None = None
) -> Replay:
    """Apply the unapplied dead letters (all, or those of `ids`) after their cause is fixed
    (a format registered, a row restored, a column widened). Idempotent: the request id
    decides, so a letter whose record is already in the database is marked replayed and
    charged nothing. Each letter is its own transaction; one that still fails stays, with its
    new error and one more attempt."""
    letters = UsageDeadLetter.objects.filter(state=UsageDeadLetter.State.UNAPPLIED).order_by("id")
    if ids is not None:
        letters = letters.filter(pk__in=ids)
    if client is None and settings.REDIS_URL:
        client = clients.sync_client()
    replayed = failing = new = 0
    for letter in letters:
        [entry] = entries_prepare(
            [(letter.entry_id, {b"e": bytes(letter.payload)})],
            format_names=lambda tag: _names(client, tag),
        )
        if entry.line is not None:
            new += entries_apply([entry])
        if entry.line is None:  # unreadable, or refused by the database again
            failing += 1
            UsageDeadLetter.objects.filter(pk=letter.pk).update(
                error=entry.error, attempts=letter.attempts + 1
            )
            continue
        replayed += 1
        error = letter.error
        if entry.problems:
            error = f"{error}; replayed with: {entry.error}"[: len(error) + 2000]
        UsageDeadLetter.objects.filter(pk=letter.pk).update(
            state=UsageDeadLetter.State.REPLAYED,
            resolved_at=timezone.now(),
            error=error,
            attempts=letter.attempts + 1,
        )
    return Replay(replayed, failing, new)


def _names(client: redis.Redis | None, tag: bytes) -> str | None:
    if client is None:
        return None
    found = client.hget(keys.FORMATS, tag)
    return found.decode() if found is not None else None
