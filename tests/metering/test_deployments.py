"""The routing rules in `metering.deployments`, as tables: which deployment goes first, when
the next is tried, how a breaker opens, probes and closes, and the per-minute limits."""

from __future__ import annotations

import pytest

from metering.deployments import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breakers,
    DeploymentInfo,
    MinuteLimits,
    failure_of_status,
    may_try_next,
    order,
)


def dep(key: str, *, weight: int = 1, priority: int = 0, **kw) -> DeploymentInfo:
    return DeploymentInfo(
        key=key,
        id=None,
        upstream_id=1,
        upstream_name="u",
        upstream_model=key,
        target=None,
        prices=(),
        weight=weight,
        priority=priority,
        **kw,
    )


def keys(deployments: list[DeploymentInfo]) -> list[str]:
    return [d.key for d in deployments]


A, B, C = dep("a"), dep("b"), dep("c")


@pytest.mark.parametrize(
    ("deployments", "unhealthy", "in_flight", "draw", "expected"),
    [
        # One deployment: itself, whatever its health.
        ([A], {"a"}, {}, 0.9, ["a"]),
        # Equal weights: the fewest in flight first, then the next fewest.
        ([A, B, C], set(), {"a": 2, "b": 0, "c": 1}, 0.0, ["b", "c", "a"]),
        # Equal weights and equal in-flight: the draw breaks the tie.
        ([A, B], set(), {}, 0.0, ["a", "b"]),
        ([A, B], set(), {}, 0.99, ["b", "a"]),
        # Weights: a draw below 3/4 of the total lands on the weight-3 deployment.
        ([dep("a", weight=3), dep("b", weight=1)], set(), {}, 0.74, ["a", "b"]),
        ([dep("a", weight=3), dep("b", weight=1)], set(), {}, 0.75, ["b", "a"]),
        # Priorities: the best (lowest) first, whatever the weights or the load.
        ([dep("a", priority=1, weight=9), dep("b", priority=0)], set(), {"b": 5}, 0.0, ["b", "a"]),
        # An unhealthy deployment is left out while another is healthy.
        ([dep("a", priority=0), dep("b", priority=1)], {"a"}, {}, 0.0, ["b"]),
        ([A, B, C], {"b"}, {}, 0.0, ["a", "c"]),
        # None healthy: all of them, in priority order, rather than none.
        ([dep("a", priority=1), dep("b", priority=0)], {"a", "b"}, {}, 0.0, ["b", "a"]),
    ],
)
def test_order(deployments, unhealthy, in_flight, draw, expected) -> None:
    ordered = order(
        deployments, healthy=lambda d: d.key not in unhealthy, in_flight=in_flight, draw=draw
    )
    assert keys(ordered) == expected


def test_weights_share_the_calls_in_proportion() -> None:
    deployments = [dep("a", weight=3), dep("b", weight=1)]
    firsts = [
        order(deployments, healthy=lambda d: True, in_flight={}, draw=i / 1000)[0].key
        for i in range(1000)
    ]
    assert firsts.count("a") == 750


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (200, None),
        (400, None),
        (401, None),
        (404, None),
        (413, None),
        (429, "http_429"),
        (500, "http_500"),
        (502, "http_502"),
        (503, "http_503"),
        (529, "http_529"),
    ],
)
def test_which_answers_move_on_to_the_next(status: int, failure: str | None) -> None:
    assert failure_of_status(status) == failure


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "left", "candidates_left", "expected"),
    [
        (1, 3, 10.0, 2, True),
        (2, 3, 10.0, 1, True),
        (3, 3, 10.0, 1, False),  # attempts spent
        (1, 3, 10.0, 0, False),  # no candidate left
        (1, 3, 0.0, 2, False),  # deadline reached
        (1, 3, -1.0, 2, False),
        (1, 1, 10.0, 2, False),  # one attempt allowed: no fallback
    ],
)
def test_may_try_next(attempts, max_attempts, left, candidates_left, expected) -> None:
    assert (
        may_try_next(
            attempts=attempts, max_attempts=max_attempts, left=left, candidates_left=candidates_left
        )
        is expected
    )


def test_breaker_opens_after_k_failures_within_the_window() -> None:
    breakers = Breakers(failures=3, window=10.0, cooldown=5.0)
    assert breakers.failure("a", 0.0) is False
    assert breakers.failure("a", 1.0) is False
    # The first failure has left the window by t=10.5: two in the window, still closed.
    assert breakers.failure("a", 10.5) is False
    assert breakers.state("a", 10.5) == CLOSED
    assert breakers.failure("a", 10.9) is True  # 1.0, 10.5 and 10.9 within ten seconds
    assert breakers.state("a", 11.0) == OPEN
    assert breakers.healthy("a", 11.0) is False
    assert breakers.open_keys(11.0) == ["a"]
    assert breakers.state("b", 11.0) == CLOSED  # per deployment


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    breakers = Breakers(failures=1, window=10.0, cooldown=5.0)
    breakers.failure("a", 0.0)
    assert breakers.healthy("a", 4.9) is False
    assert breakers.state("a", 5.0) == HALF_OPEN
    assert breakers.healthy("a", 5.0) is True
    breakers.started("a", 5.0)  # the probe
    assert breakers.healthy("a", 5.1) is False  # one probe at a time
    assert breakers.success("a") is True
    assert breakers.state("a", 5.2) == CLOSED
    assert breakers.healthy("a", 5.2) is True
    assert breakers.success("a") is False  # already closed


def test_a_failed_probe_opens_again_for_a_full_cool_down() -> None:
    breakers = Breakers(failures=1, window=10.0, cooldown=5.0)
    breakers.failure("a", 0.0)
    breakers.started("a", 6.0)
    assert breakers.failure("a", 6.5) is True
    assert breakers.state("a", 11.0) == OPEN
    assert breakers.state("a", 11.5) == HALF_OPEN


def test_failures_while_open_do_not_extend_the_cool_down() -> None:
    breakers = Breakers(failures=1, window=10.0, cooldown=5.0)
    breakers.failure("a", 0.0)
    assert breakers.failure("a", 2.0) is False  # a call already in flight when it opened
    assert breakers.state("a", 5.0) == HALF_OPEN


def test_a_success_forgets_earlier_failures() -> None:
    breakers = Breakers(failures=2, window=10.0, cooldown=5.0)
    breakers.failure("a", 0.0)
    breakers.success("a")
    assert breakers.failure("a", 1.0) is False
    assert breakers.state("a", 1.0) == CLOSED


def test_an_opening_seen_elsewhere_is_adopted() -> None:
    breakers = Breakers(failures=5, window=10.0, cooldown=5.0)
    breakers.opened_elsewhere("a", 100.0)
    assert breakers.state("a", 101.0) == OPEN
    assert breakers.state("a", 105.0) == HALF_OPEN


@pytest.mark.parametrize(
    ("rpm", "tpm", "sent", "tokens", "room"),
    [
        (None, None, [10_000] * 50, 10_000, True),
        (2, None, [1, 1], 1, False),
        (3, None, [1, 1], 1, True),
        (None, 1000, [600], 400, True),
        (None, 1000, [600], 401, False),
    ],
)
def test_minute_limits(rpm, tpm, sent, tokens, room) -> None:
    limits = MinuteLimits()
    d = dep("a", rpm=rpm, tpm=tpm)
    for count in sent:
        limits.count(d, count, 30.0)
    assert limits.room(d, tokens, 31.0) is room
    assert limits.room(d, tokens, 61.0) is True  # the next minute starts afresh


def test_minute_limits_count_what_other_processes_sent() -> None:
    limits = MinuteLimits()
    d = dep("a", rpm=5, tpm=1000)
    limits.count(d, 100, 30.0)
    # The shared counter holds this process's call and three of others' (300 tokens).
    limits.seen_elsewhere("a", 0, 4, 400, 31.0)
    assert limits.room(d, 100, 31.0) is True  # 4 + 1 requests, 400 + 100 tokens
    limits.count(d, 100, 31.0)
    assert limits.room(d, 1, 32.0) is False  # five requests this minute, by all processes
    limits.seen_elsewhere("a", 0, 2, 200, 32.0)  # a read before others' calls reached Redis
    assert limits.room(d, 100, 32.0) is True  # never below zero: others' count is 0 then
    limits.seen_elsewhere("a", 1, 50, 50_000, 61.0)
    assert limits.room(d, 100, 61.0) is False  # the next minute's own shared count
    limits.seen_elsewhere("a", 0, 50, 50_000, 62.0)  # a stale read of the past minute
    limits.seen_elsewhere("a", 1, 1, 10, 62.0)
    assert limits.room(d, 100, 62.0) is True


def test_a_probe_that_ends_without_an_outcome_lets_the_next_call_probe() -> None:
    breakers = Breakers(failures=1, window=10.0, cooldown=5.0)
    breakers.failure("a", 0.0)
    breakers.started("a", 5.0)
    assert breakers.healthy("a", 5.5) is False
    breakers.probe_over("a")  # the client left before the deployment answered
    assert breakers.healthy("a", 5.6) is True
