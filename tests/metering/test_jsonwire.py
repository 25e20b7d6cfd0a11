"""The upstream body encoder: the same bytes as json's, long strings encoded in pieces."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering import jsonwire


def reference(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
long_texts = st.builds(
    lambda piece, times: piece * times, st.text(min_size=1, max_size=50), st.integers(0, 4000)
)
leaves = st.none() | st.booleans() | st.integers() | texts | long_texts
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_same_bytes_as_json(value: object) -> None:
    assert jsonwire.dumps_bytes(value) == reference(value)


@pytest.mark.parametrize(
    "text",
    [
        "x" * (jsonwire.PIECE_CHARS * 3 + 7),
        'quote " backslash \\ newline \n tab \t nul \x00 ' * 20_000,
        "東京 🎉 é" * 30_000,
        "\x00tb-0123-0\x00" * 10_000,  # looks like a placeholder: still just text
    ],
)
def test_long_strings_anywhere(text: str) -> None:
    value = {
        "model": "m",
        "messages": [{"role": "user", "content": text}, {"role": "user", "content": [text, 1]}],
        text[:10]: text,
    }
    assert jsonwire.dumps_bytes(value) == reference(value)


def test_a_lone_surrogate_fails_as_json_would() -> None:
    with pytest.raises(UnicodeEncodeError):
        jsonwire.dumps_bytes({"content": "x" * 100_000 + "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        reference({"content": "x" * 100_000 + "\ud800"})


def test_other_threads_run_while_a_large_body_is_encoded() -> None:
    """The encoder lets go of the interpreter between pieces: a thread that ticks every
    millisecond is never held up for long (with json's one-piece encoding it waits the whole
    encode)."""
    body = {"messages": [{"role": "user", "content": "budget ledger " * 2_000_000}]}
    done = threading.Event()
    gaps: list[float] = []

    def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.02)
    started = time.perf_counter()
    for _ in range(3):
        jsonwire.dumps_bytes(body)
    elapsed = time.perf_counter() - started
    done.set()
    thread.join()
    assert max(gaps) < max(0.015, elapsed / 6), (max(gaps), elapsed)
