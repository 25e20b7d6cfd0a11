"""Every Redis key name the quota and the usage stream use, built and parsed here only.

Counters (`tb:q:*`, hashes with `used` and `reserved`):
- `tb:q:a:<allowance id>`: an employee's allowance;
- `tb:q:k:<key id>`: a virtual key's own token cap;
- `tb:q:c:<cost center id>:<fiscal year>`: a capped cost center's spend in a fiscal year.

Holds are `tb:h:<hold uuid hex>` (indexed by expiry in `tb:holds`), rate windows
`tb:rl:<k|e>:<id>:<minute>`, liveness `tb:live:<process>` with `tb:open:<process>` (the holds it
has in hand), the usage stream `tb:usage` and its formats `tb:usage:formats`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

STREAM = "tb:usage"
GROUP = "tb-ingest"
HOLDS = "tb:holds"
FORMATS = "tb:usage:formats"  # usage event format tag -> its field names (see usage_stream)
LIVE_PREFIX = "tb:live:"
OPEN_PREFIX = "tb:open:"
COUNTER_PREFIX = "tb:q:"
COUNTER_PATTERN = COUNTER_PREFIX + "*"  # for SCAN MATCH
HOLD_PREFIX = "tb:h:"
WINDOW_PREFIX = "tb:rl:"

HOLD_TTL = 30 * 60  # seconds a hold lives before `sweep` gives it back (as the database's)
TOMBSTONE_TTL = 24 * 3600  # a closed hold is remembered this long, so a repeated close is a no-op
KEY_COUNTER_TTL = 40 * 24 * 3600  # a key's cap is not per year: idle counters re-seed later

CounterKind = Literal["allowance", "key", "cost_center"]
_TAGS: dict[CounterKind, str] = {"allowance": "a", "key": "k", "cost_center": "c"}
_KINDS: dict[str, CounterKind] = {tag: kind for kind, tag in _TAGS.items()}


@dataclass(frozen=True)
class Counter:
    """A counter's identity: what its name says."""

    kind: CounterKind
    ident: int  # the allowance, key or cost center id
    fiscal_year: int | None = None  # cost centers only

    @property
    def name(self) -> str:
        base = f"{COUNTER_PREFIX}{_TAGS[self.kind]}:{self.ident}"
        return base if self.fiscal_year is None else f"{base}:{self.fiscal_year}"


def allowance_counter(allowance_id: int) -> str:
    return Counter("allowance", allowance_id).name


def key_counter(key_id: int) -> str:
    return Counter("key", key_id).name


def cost_center_counter(cost_center_id: int, fiscal_year: int) -> str:
    return Counter("cost_center", cost_center_id, fiscal_year).name


def counter_parse(name: str | bytes) -> Counter:
    """The counter a name stands for; ValueError for a name no counter has."""
    text = name.decode() if isinstance(name, bytes) else name
    if not text.startswith(COUNTER_PREFIX):
        raise ValueError(f"not a quota counter: {text!r}")
    parts = text[len(COUNTER_PREFIX) :].split(":")
    kind = _KINDS.get(parts[0])
    want = 3 if kind == "cost_center" else 2
    if kind is None or len(parts) != want or not all(_is_id(p) for p in parts[1:]):
        raise ValueError(f"not a quota counter: {text!r}")
    year = int(parts[2]) if kind == "cost_center" else None
    return Counter(kind, int(parts[1]), year)


def _is_id(text: str) -> bool:
    # ASCII digits only, no sign, no leading zero: exactly what `name` writes for an id.
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def hold_key(hold_id: uuid.UUID) -> str:
    return f"{HOLD_PREFIX}{hold_id.hex}"


def hold_parse(key: str | bytes) -> uuid.UUID:
    """The hold id a hold key stands for; ValueError for anything else."""
    text = key.decode() if isinstance(key, bytes) else key
    hexed = text[len(HOLD_PREFIX) :]
    if not text.startswith(HOLD_PREFIX) or len(hexed) != 32 or hexed != hexed.lower():
        raise ValueError(f"not a hold key: {text!r}")
    return uuid.UUID(hex=hexed)


def rate_window(scope: Literal["k", "e"], ident: int, now: float) -> str:
    """The per-minute rate window of a key (`k`) or an employee (`e`) for the minute of `now`."""
    return f"{WINDOW_PREFIX}{scope}:{ident}:{int(now // 60)}"


def live_key(owner: str) -> str:
    return LIVE_PREFIX + owner


def open_key(owner: str) -> str:
    return OPEN_PREFIX + owner
