"""What makes a usage event unwritable as it came, and the writable form of it (pure).

PostgreSQL refuses a NUL in text and any text that is not valid UTF-8 (a lone surrogate, as
bytes or as a JSON escape), and a value longer than its column; SQLite's driver refuses lone
surrogates. Such text is escaped (`\\x00`, `\\ud800`: visible, and the record's other fields
and its charge stay exact) and cut to its column's length; the original stays in the dead
letter."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from django.db import models

from metering.usage_stream.events import _FIELDS, UsageEvent

_TEXT_FIELDS = [f for f in _FIELDS if isinstance(f, models.CharField | models.TextField)]
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def payload_clean(payload: bytes, *, lines: int = 1) -> bool:
    """True when the bytes can go to COPY as they are: valid UTF-8 without a NUL, and `lines`
    lines (the encoder escapes line breaks; a batch is screened joined, in a few C calls). The
    cheap screen: anything else the database refuses is found by the batch's bisection."""
    if b"\x00" in payload or b"\r" in payload or payload.count(b"\n") != lines - 1:
        return False
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


def payload_text(payload: bytes) -> str:
    """The payload as text, whatever its bytes: UTF-8; else with encoded surrogates read as
    the surrogates they stand for; else with undecodable bytes kept as escape surrogates (all
    of which `text_storable` then escapes)."""
    for errors in ("strict", "surrogatepass", "surrogateescape"):
        try:
            return payload.decode("utf-8", errors)
        except UnicodeDecodeError:
            continue
    raise AssertionError("surrogateescape decodes any bytes")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\x00":
        return "\\x00"
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def text_storable(text: str) -> str:
    """`text` with NULs and lone surrogates escaped, so any database stores it."""
    return _UNSTORABLE.sub(_escape, text) if _UNSTORABLE.search(text) else text


def _what(text: str) -> str:
    found = {
        "NUL" if c == "\x00" else "invalid UTF-8 (a lone surrogate or a bad byte)"
        for c in _UNSTORABLE.findall(text)
    }
    return " and ".join(sorted(found))


def event_repair(event: UsageEvent) -> tuple[UsageEvent, list[str]]:
    """The event with every text value made storable and cut to its column, and what was
    changed (empty: the event was writable as it was). Numbers and the charge are untouched."""
    problems: list[str] = []
    values: dict[str, Any] = dict(event.values)
    for f in _TEXT_FIELDS:
        value = values.get(f.attname)
        if not isinstance(value, str):
            continue
        fixed = text_storable(value)
        if fixed != value:
            problems.append(f"{f.attname}: {_what(value)} escaped")
        if f.max_length is not None and len(fixed) > f.max_length:
            problems.append(f"{f.attname}: cut from {len(fixed)} to {f.max_length} characters")
            fixed = fixed[: f.max_length]
        values[f.attname] = fixed
    if not problems:
        return event, []
    return replace(event, values=values), problems
