"""The wire form of a usage event: one closed call's usage record and the charges the Redis
backend made for it, as one line of PostgreSQL's COPY text format."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metering.models import UsageRecord

_FIELDS = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]


@dataclass(frozen=True)
class Charge:
    """What one call costs each budget (empty amounts for a released call)."""

    allowance_id: int | None
    unit: str
    amount: Decimal  # in the allowance's unit
    cost: Decimal  # USD, charged to every capped cost center held
    cost_center_ids: tuple[int, ...]
    fiscal_year: int
    key_id: int | None  # only for keys with their own cap
    key_tokens: int


@dataclass(frozen=True)
class UsageEvent:
    """One closed call: its usage record's field values (by attribute name) and its charge.
    Plain values, not a model instance: the consumer handles tens of thousands a second."""

    values: dict[str, Any]
    charge: Charge

    @classmethod
    def of(cls, record: UsageRecord, charge: Charge) -> UsageEvent:
        return cls({f.attname: getattr(record, f.attname) for f in _FIELDS}, charge)

    @property
    def request_id(self) -> str:
        return self.values["request_id"]


# The wire form is one line of PostgreSQL's COPY text format: a format tag, the record's
# values in `_FIELDS` order, then the charge. The consumer hands a batch of lines to COPY as
# they came out of Redis, so PostgreSQL parses typed columns and nothing is decoded in Python.
# The tag names the field list (a hash of it); each producer registers its list under the tag
# in Redis, so a consumer can still read events written by a version with other fields (during
# a deploy) by name. Events written as JSON by earlier versions are read too.
_CHARGE_COLUMNS = (
    ("charge_allowance_id", "bigint"),
    ("charge_unit", "text"),
    ("charge_amount", "numeric"),
    ("charge_cost", "numeric"),
    ("charge_cost_center_ids", "bigint[]"),
    ("charge_fiscal_year", "integer"),
    ("charge_key_id", "bigint"),
    ("charge_key_tokens", "bigint"),
)
_NAMES = ",".join(f.attname for f in _FIELDS)
FORMAT = "u1." + hashlib.sha256(_NAMES.encode()).hexdigest()[:12]
_PREFIX = FORMAT.encode() + b"\t"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def format_names() -> tuple[str, str]:
    """This version's format tag and the field names it stands for."""
    return FORMAT, _NAMES


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":")).translate(_ESCAPES)
    return str(value)


def event_encode(event: UsageEvent) -> str:
    values = event.values
    c = event.charge
    cells = [FORMAT, *(_text(values.get(f.attname)) for f in _FIELDS)]
    cells += [
        _text(c.allowance_id),
        _text(c.unit),
        _text(c.amount),
        _text(c.cost),
        "{" + ",".join(str(i) for i in c.cost_center_ids) + "}",
        str(c.fiscal_year),
        _text(c.key_id),
        str(c.key_tokens),
    ]
    return "\t".join(cells)


def _cell(text: str) -> str | None:
    if text == "\\N":
        return None
    if "\\" not in text:
        return text
    out, chars = [], iter(text)
    for char in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "") if char == "\\" else char)
    return "".join(out)


def event_decode(raw: str | bytes, names: str | None = None) -> UsageEvent:
    """An event from its wire form. `names`: the field names of the event's format when it is
    not this version's (see `format_names`); fields it lacks take their model default."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith("{"):
        return _event_decode_json(text)
    tag, *cells = text.split("\t")
    if tag != FORMAT and names is None:
        raise ValueError(f"usage event of unknown format {tag!r}")
    fields = (names or _NAMES).split(",")
    record, charge = cells[: len(fields)], cells[len(fields) :]
    by_name = dict(zip(fields, record, strict=True))
    values = {}
    for f in _FIELDS:
        if f.attname in by_name:
            values[f.attname] = f.to_python(_cell(by_name[f.attname]))
        else:
            values[f.attname] = f.get_default()
    return UsageEvent(values, _charge(charge))


def _charge(cells: list[str]) -> Charge:
    a, unit, amount, cost, centers, year, key_id, key_tokens = (_cell(c) for c in cells)
    return Charge(
        None if a is None else int(a),
        unit or "",
        Decimal(amount or 0),
        Decimal(cost or 0),
        tuple(int(i) for i in (centers or "{}").strip("{}").split(",") if i),
        int(year or 0),
        None if key_id is None else int(key_id),
        int(key_tokens or 0),
    )


def charge_decode(text: str) -> Charge:
    """Only the charge of an event, whatever its record's format: the charge is the last eight
    cells of every version's line (or the `c` of a JSON event)."""
    if text.startswith("{"):
        return _event_decode_json(text).charge
    cells = text.split("\t")
    if len(cells) < 9:
        raise ValueError("not a usage event")
    return _charge(cells[-8:])


def _event_decode_json(text: str) -> UsageEvent:
    data = json.loads(text)
    values = data["r"]
    values["created_at"] = dt.datetime.fromisoformat(values["created_at"])
    values["cost"] = Decimal(values["cost"])
    a, unit, amount, cost, ccs, fy, key_id, key_tokens = data["c"]
    return UsageEvent(
        values,
        Charge(a, unit, Decimal(amount), Decimal(cost), tuple(ccs), fy, key_id, key_tokens),
    )
