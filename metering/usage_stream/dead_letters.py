"""Dead letters: the counts operations show, and the replay of the ones not yet applied."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from metering import quota_redis
from metering.models import UsageDeadLetter
from metering.usage_stream.intake import entries_apply, entries_prepare


def dead_letter_counts() -> dict[str, int]:
    """Dead letters by state (every state present, zeros included)."""
    counts = dict.fromkeys(UsageDeadLetter.State.values, 0)
    rows = UsageDeadLetter.objects.values_list("state").annotate(n=Count("id")).order_by()
    for state, n in rows:
        counts[state] = n
    return counts


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
        client = quota_redis.sync_client()
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
    found = client.hget(quota_redis.FORMATS, tag)
    return found.decode() if found is not None else None
