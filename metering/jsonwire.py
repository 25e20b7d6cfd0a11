"""Compact JSON bytes for the upstream, encoded so that a multi-megabyte prompt does not hold the
interpreter in one piece (pure: no Django).

`json`'s C encoder holds the interpreter lock for the whole call: encoding a 7 MB prompt takes
20 ms on a quiet machine and over 100 ms on a loaded one, and no other thread of the process
(the event loop included) runs meanwhile. `dumps_bytes` gives the same bytes, but encodes each
string longer than PIECE_CHARS separately, in pieces, with the lock free between them; the rest
of the value (small strings, numbers, the structure) still goes through the C encoder in one
call, with the long strings swapped for placeholders.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

PIECE_CHARS = 64 * 1024

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps_bytes(value: Any) -> bytes:
    """`json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()`, byte for byte
    (UnicodeEncodeError alike for a lone surrogate), with long strings encoded piecewise."""
    long: list[str] = []
    marker = f"\x00tb-{uuid.uuid4().hex}-"
    skeleton = _swap(value, long, marker)
    if not long:
        return _DUMP(value).encode()
    # Each placeholder is encoded as "\u0000tb-<hex>-<n>\u0000" (with its quotes): split on
    # its escaped form and put the long string's escaped pieces in its place.
    escaped = _DUMP(marker)[1:-1]
    parts = _DUMP(skeleton).split(escaped)
    out = [parts[0].encode()]
    for part in parts[1:]:
        index, _, rest = part.partition(_DUMP("\x00")[1:-1])
        text = long[int(index)]
        for i in range(0, len(text), PIECE_CHARS):
            out.append(_DUMP(text[i : i + PIECE_CHARS])[1:-1].encode())
            time.sleep(0)  # the lock goes to a waiting thread now, not a switch interval later
        out.append(rest.encode())
    return b"".join(out)


def _swap(value: Any, long: list[str], marker: str) -> Any:
    """`value` with each string over PIECE_CHARS replaced by `marker<n>\\x00` (n its index in
    `long`); containers without one are returned as they are, not copied."""
    if isinstance(value, str):
        if len(value) <= PIECE_CHARS:
            return value
        long.append(value)
        return f"{marker}{len(long) - 1}\x00"
    if isinstance(value, dict):
        swapped = {key: _swap(item, long, marker) for key, item in value.items()}
        return value if all(swapped[k] is value[k] for k in value) else swapped
    if isinstance(value, list):
        items = [_swap(item, long, marker) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
