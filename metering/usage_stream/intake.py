"""From stream entries to the database, poison-proof: no entry can stop the batch it is in.

Each entry is prepared on its own: events of this version that pass a cheap screen go to the
database untouched; the others are decoded, and text the database cannot store is escaped
(`poison.event_repair`). A batch the database still refuses (a value no screen caught) is split
in halves and each half applied in its own transaction (the request id decides, so a half
applied twice charges once), down to the one entry at fault, which is repaired or, when it
cannot be written in any form, kept unapplied. Every entry that was not written as it came
leaves a dead letter (`UsageDeadLetter`) in the same transaction as its record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, connection, transaction

from metering.models import UsageDeadLetter
from metering.usage_stream.apply import usage_events_apply, usage_payloads_apply
from metering.usage_stream.events import _PREFIX, UsageEvent, event_decode, event_encode
from metering.usage_stream.poison import event_repair, payload_clean, payload_text, text_storable

try:  # the driver's own errors: the COPY path runs on the driver's cursor
    import psycopg
except ImportError:  # pragma: no cover - SQLite-only installs
    psycopg = None

log = logging.getLogger("tokenbudget.ingest")

# What a database raises for data it will not take: the entry's fault, not the database's.
# (A database that is down or a deadlock raises OperationalError: the batch is retried whole.)
# ValueError and TypeError: a value the driver cannot even send (a JSON event's number that is
# not one).
REFUSED: tuple[type[BaseException], ...] = (DataError, IntegrityError, ValueError, TypeError)
if psycopg is not None:
    REFUSED += (psycopg.DataError, psycopg.IntegrityError)
# What makes an entry unreadable: bad cells, a bad number, an unknown format, not an event.
_UNREADABLE = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
    ValidationError,
)
_ERROR_CHARS = 2000

FormatNames = Callable[[bytes], str | None]  # a format tag -> its field names, if registered


@dataclass(slots=True)
class Entry:
    """One stream entry on its way to the database."""

    entry_id: str
    payload: bytes  # exactly as on the stream
    line: bytes | None = None  # this version's wire form; None: nothing can be written
    event: UsageEvent | None = None  # decoded (SQLite, or repaired)
    state: str = ""  # "" (written as it came), or a dead letter's state
    problems: list[str] = field(default_factory=list)
    request_id: str = ""

    def unapplied(self, why: str) -> None:
        self.line, self.event = None, None
        self.state = UsageDeadLetter.State.UNAPPLIED
        self.problems.append(why)

    @property
    def error(self) -> str:
        return text_storable("; ".join(self.problems))[:_ERROR_CHARS]


def batch_apply(raw: list[tuple[bytes | str, dict]], *, format_names: FormatNames) -> int:
    """Apply a batch of stream entries; returns how many records were new. The common case,
    a PostgreSQL batch whose every entry passes the screen, is screened once as a whole and
    goes to COPY as it came; any other batch is taken entry by entry."""
    payloads = [fields.get(b"e") for _, fields in raw]
    if connection.vendor == "postgresql" and _batch_clean(payloads):
        try:
            with transaction.atomic():
                return usage_payloads_apply(payloads=payloads)
        except REFUSED:
            # A value no screen catches (text too long, a row gone): find the entry at fault.
            entries = entries_prepare(raw, format_names=format_names)
            middle = len(entries) // 2
            if middle == 0:
                return entries_apply(entries)
            return entries_apply(entries[:middle]) + entries_apply(entries[middle:])
    return entries_apply(entries_prepare(raw, format_names=format_names))


def _batch_clean(payloads: list[bytes | None]) -> bool:
    if not all(p is not None and p.startswith(_PREFIX) for p in payloads):
        return False
    return payload_clean(b"\n".join(payloads), lines=len(payloads))  # type: ignore[arg-type]


def entries_prepare(
    raw: list[tuple[bytes | str, dict]], *, format_names: FormatNames
) -> list[Entry]:
    """Stream entries (id, fields) as entries ready to apply. Never raises for bad content."""
    postgres = connection.vendor == "postgresql"
    entries = []
    for entry_id, fields in raw:
        payload = fields.get(b"e")
        entry = Entry(_text(entry_id), payload if isinstance(payload, bytes) else b"")
        if payload is None:
            entry.unapplied("the stream entry has no event field 'e'")
        elif postgres and payload.startswith(_PREFIX) and payload_clean(payload):
            entry.line = payload  # the fast path: straight to COPY
        else:
            _decode(entry, format_names)
        entries.append(entry)
    return entries


def _decode(entry: Entry, format_names: FormatNames) -> None:
    """Decode and repair: this version's form again, with text the database can store."""
    try:
        text = payload_text(entry.payload)
        tag = text.split("\t", 1)[0]
        names = None
        if not text.startswith("{") and not entry.payload.startswith(_PREFIX):
            names = format_names(tag.encode())
        event = event_decode(text, names)
        repaired, problems = event_repair(event)
        # SQLite writes the decoded event; only COPY needs the line encoded again.
        postgres = connection.vendor == "postgresql"
        line = event_encode(repaired).encode() if postgres or problems else entry.payload
    except _UNREADABLE as exc:
        entry.unapplied(f"cannot be read: {exc}")
        return
    entry.event, entry.line, entry.request_id = repaired, line, repaired.request_id
    if problems:
        entry.state = UsageDeadLetter.State.WRITTEN
        entry.problems += problems


def entries_apply(entries: list[Entry]) -> int:
    """Write the entries' records and charges, and their dead letters; returns how many
    records were new. Raises only when the database itself fails (nothing of the failing
    transaction is kept); an entry's bad data never raises."""
    if not entries:
        return 0
    try:
        with transaction.atomic():
            new = _write(entries)
    except REFUSED as exc:
        if len(entries) > 1:
            # Find the entry at fault: each half in its own transaction. Halves that went in
            # are kept; re-applying one later charges nothing twice.
            middle = len(entries) // 2
            return entries_apply(entries[:middle]) + entries_apply(entries[middle:])
        return _salvage(entries[0], exc)
    _log_letters(entries)
    return new


def _write(entries: list[Entry]) -> int:
    writable = [e for e in entries if e.line is not None]
    new = 0
    if writable and connection.vendor == "postgresql":
        new = usage_payloads_apply(payloads=[e.line for e in writable if e.line is not None])
    elif writable:
        new = usage_events_apply(
            events=[e.event or event_decode(payload_text(e.line or b"")) for e in writable]
        )
    letters = [e for e in entries if e.state]
    if letters:
        UsageDeadLetter.objects.bulk_create(
            [
                UsageDeadLetter(
                    entry_id=e.entry_id,
                    request_id=text_storable(e.request_id)[:64],
                    state=e.state,
                    error=e.error,
                    payload=e.payload,
                )
                for e in letters
            ],
            ignore_conflicts=True,  # an entry delivered again after a crash: one letter
        )
    return new


def _log_letters(entries: list[Entry]) -> None:
    """Logged once committed (a transaction the bisection rolls back wrote nothing)."""
    for e in entries:
        if e.state:
            log.error(
                "usage event dead-lettered (%s): entry %s: %s",
                e.state,
                e.entry_id,
                e.error,
                extra={"entry": e.entry_id, "state": e.state, "error": e.error},
            )


def _salvage(entry: Entry, exc: BaseException) -> int:
    """The one entry the database refused: repaired if repair changes it, else unapplied."""
    refused = f"the database refused it: {type(exc).__name__}: {exc}".strip()
    if not entry.state and entry.line is not None and entry.event is None:
        original = entry.line
        _decode(entry, lambda _tag: None)  # the fast path skipped the checks: run them now
        if not entry.state and entry.line not in (None, original):
            # Readable, but not quite this version's wire form (a stray escape): the line
            # encoded again is what the database can parse.
            entry.state = UsageDeadLetter.State.WRITTEN
            entry.problems.append("encoded again in this version's wire form")
        if entry.state == UsageDeadLetter.State.WRITTEN:
            entry.problems.append(refused)
            try:
                with transaction.atomic():
                    new = _write([entry])
                _log_letters([entry])
                return new
            except REFUSED as again:
                refused = f"the database refused it: {type(again).__name__}: {again}".strip()
    if entry.state != UsageDeadLetter.State.UNAPPLIED:
        entry.unapplied(refused)
    with transaction.atomic():
        _write([entry])
    _log_letters([entry])
    return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
