"""Text from clients, checked once at the boundary (pure: no I/O, no Django at import).

What the proxy stores (intent, metadata values, model and key names) must be writable by every
backend: PostgreSQL refuses NUL in text, neither database nor Redis can encode a lone surrogate
as UTF-8, and control characters in a label break exports and pages. Such strings are refused
with a 400 before any hold is taken, so a malformed request can neither leak a hold nor be served
and then fail to be recorded.

Prompts are held to less: tabs, newlines and escape sequences are ordinary in prompts, so only
what no provider body can carry (a lone surrogate) or no one means to send (NUL) is refused.

`record_sanitised` is the last line: a record that still fails to be written is written again
with its text made safe, so a served call is charged and recorded, never dropped.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from metering.providers.base import RequestError

# C0 controls, DEL, C1 controls, and UTF-16 surrogates (in a Python str, any surrogate left after
# JSON decoding is a lone one: a valid pair decodes to one astral character).
_LABEL_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PROMPT_BAD = re.compile("[\x00\ud800-\udfff]")
# In JSON text, NUL and surrogates can only arrive as \u escapes (raw NUL is invalid JSON, raw
# surrogate bytes are invalid UTF-8), so a body without these escapes needs no walk.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _problem(char: str) -> str:
    code = ord(char)
    if code == 0:
        return "a NUL character (U+0000)"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate (U+{code:04X})"
    return f"a control character (U+{code:04X})"


def label_problem(value: str) -> str | None:
    """What makes `value` unfit to store as a label, or None."""
    found = _LABEL_BAD.search(value)
    return None if found is None else _problem(found.group())


def label_check(value: str, *, param: str) -> None:
    """RequestError naming `param` when `value` holds a NUL, a lone surrogate or a control
    character."""
    problem = label_problem(value)
    if problem is not None:
        raise RequestError(f"Invalid '{param}': the text contains {problem}.", param=param)


def metadata_check(data: dict[str, Any]) -> None:
    """Check `metadata`'s string keys and values (the intent among them) as labels."""
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return
    for key, value in metadata.items():
        label_check(key, param="metadata")
        if isinstance(value, str):
            label_check(value, param=f"metadata.{key}")


def body_check(data: Any, raw: bytes) -> None:
    """RequestError naming the first string of the decoded body `data` that holds a NUL or a lone
    surrogate. `raw` is the body's JSON text: without a suspect escape in it nothing is walked."""
    if _SUSPECT_ESCAPE.search(raw) is None:
        return
    # Iterative, so a deeply nested body cannot exhaust the stack here.
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _PROMPT_BAD.search(value)
            if found is not None:
                param = path or "body"
                raise RequestError(
                    f"Invalid '{param}': the text contains {_problem(found.group())}.",
                    param=param,
                )
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                found = _PROMPT_BAD.search(key)
                if found is not None:
                    raise RequestError(
                        f"Invalid key in '{path or 'body'}': it contains {_problem(found.group())}."
                    )
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend(
                (f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value)))
            )


def header_text(value: str, *, name: str) -> str:
    """A header value as the UTF-8 text the client sent (servers hand headers over as latin-1),
    checked as a label; RequestError when it is not UTF-8 or not a fit label."""
    try:
        text = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RequestError(f"Invalid '{name}' header: it is not UTF-8 text.", param=name) from None
    label_check(text, param=name)
    return text


def safe_text(value: str, max_length: int | None = None) -> str:
    """`value` with NUL, lone surrogates and control characters replaced by U+FFFD, cut to
    `max_length`."""
    text = _LABEL_BAD.sub("\ufffd", value)
    return text[:max_length] if max_length else text


def record_sanitised(record: Any) -> Any:
    """A copy of a model instance whose text fields are all storable (see `safe_text`)."""
    clean = copy.copy(record)
    for field in record._meta.concrete_fields:
        value = getattr(record, field.attname)
        if isinstance(value, str):
            setattr(clean, field.attname, safe_text(value, getattr(field, "max_length", None)))
    return clean
