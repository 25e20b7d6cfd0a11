"""The Redis key names of the quota: every name built parses back to what built it, and
nothing else parses."""

from __future__ import annotations

import uuid

import pytest

from metering.quota import keys
from metering.quota.keys import Counter

COUNTERS = [
    # (built by, name, parsed)
    (lambda: keys.allowance_counter(7), "tb:q:a:7", Counter("allowance", 7)),
    (lambda: keys.allowance_counter(0), "tb:q:a:0", Counter("allowance", 0)),
    (lambda: keys.key_counter(123456789012), "tb:q:k:123456789012", Counter("key", 123456789012)),
    (
        lambda: keys.cost_center_counter(3, 2026),
        "tb:q:c:3:2026",
        Counter("cost_center", 3, 2026),
    ),
    (
        lambda: keys.cost_center_counter(41, 1999),
        "tb:q:c:41:1999",
        Counter("cost_center", 41, 1999),
    ),
]


@pytest.mark.parametrize(("build", "name", "parsed"), COUNTERS)
def test_a_counter_name_parses_back_to_what_built_it(build, name: str, parsed: Counter) -> None:
    assert build() == name
    assert keys.counter_parse(name) == parsed
    assert keys.counter_parse(name.encode()) == parsed, "as SCAN answers it: bytes"
    assert parsed.name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "tb:q:",
        "tb:q:a",
        "tb:q:a:",
        "tb:q:x:1",  # no such kind
        "tb:q:a:1:2026",  # an allowance has no year in its name
        "tb:q:k:1:2",
        "tb:q:c:1",  # a cost center needs its year
        "tb:q:c:1:2026:3",
        "tb:q:a:-1",
        "tb:q:a:+1",
        "tb:q:a:01",  # not what `name` writes
        "tb:q:a:1.0",
        "tb:q:a: 1",
        "tb:q:a:\u0661",  # a digit, but not ASCII
        "tb:h:0123456789abcdef0123456789abcdef",
        "tb:usage",
        "xtb:q:a:1",
    ],
)
def test_a_name_no_counter_has_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a quota counter"):
        keys.counter_parse(name)


def test_every_counter_name_matches_the_scan_pattern() -> None:
    for build, _, _ in COUNTERS:
        assert build().startswith(keys.COUNTER_PATTERN.removesuffix("*"))


@pytest.mark.parametrize(
    "hold_id",
    [
        uuid.UUID(int=0),
        uuid.UUID(int=2**128 - 1),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ],
)
def test_a_hold_key_parses_back_to_its_hold(hold_id: uuid.UUID) -> None:
    key = keys.hold_key(hold_id)
    assert key == "tb:h:" + hold_id.hex
    assert keys.hold_parse(key) == hold_id
    assert keys.hold_parse(key.encode()) == hold_id


@pytest.mark.parametrize(
    "key",
    [
        "tb:h:",
        "tb:h:1234",
        "tb:h:12345678-1234-5678-1234-567812345678",  # the dashed form is not what we write
        "tb:h:0123456789ABCDEF0123456789ABCDEF",
        "tb:h:0123456789abcdef0123456789abcdeg",
        "tb:q:a:1",
    ],
)
def test_a_key_that_is_no_hold_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        keys.hold_parse(key)


@pytest.mark.parametrize(
    ("scope", "ident", "now", "window"),
    [
        ("k", 5, 0.0, "tb:rl:k:5:0"),
        ("k", 5, 59.999, "tb:rl:k:5:0"),
        ("e", 9, 60.0, "tb:rl:e:9:1"),
        ("e", 9, 1_790_000_000.5, "tb:rl:e:9:29833333"),
    ],
)
def test_a_rate_window_is_per_minute(scope, ident: int, now: float, window: str) -> None:
    assert keys.rate_window(scope, ident, now) == window


def test_liveness_keys_are_per_process() -> None:
    assert keys.live_key("host:12:ab") == "tb:live:host:12:ab"
    assert keys.open_key("host:12:ab") == "tb:open:host:12:ab"
    assert keys.live_key("host:12:ab").startswith(keys.LIVE_PREFIX)
    assert keys.open_key("host:12:ab").startswith(keys.OPEN_PREFIX)
