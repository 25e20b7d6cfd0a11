"""Which deployment serves a call, when to try the next, and when a deployment rests.

Pure: nothing here awaits, reads a clock or draws a random number; the proxy's shell passes
`now` and `draw` in, so every rule is a table of inputs and answers (tests/metering/
test_deployments.py).

- **Choice.** Among the healthy deployments of the best (lowest) priority, one is drawn by
  weight; when their weights are equal the one with the fewest calls in flight in this process
  goes first. The others of that priority follow in the same way, then the next priority's.
  A deployment is unhealthy while its breaker is open or its own per-minute limits (rpm, tpm)
  are spent (by every proxy process, as far as this one last read the shared counts). When none is healthy, all of them are tried in priority order rather than none.
- **Fallback.** A connect error, a timeout before the answer's head, a 429 or a 5xx moves the
  call to the next candidate (after the route's deployments come its fallback models'), at
  most `max_attempts` in all and only while the call's deadline lasts. An answer whose head was
  taken is never retried: from then on bytes may reach the client.
- **Breaker.** K failures within a window open a deployment's breaker; after the cool-down one
  call at a time may probe it (half-open); a success closes it, a failure opens it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# What an attempt ended with, as counted per deployment: "ok" or one of the failures.
CONNECT, TIMEOUT = "connect", "timeout"


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment as the proxy caches it (see `selectors.route_info_load`)."""

    key: str  # stable name for breakers and metrics: "<route>@<upstream>/<upstream model>"
    id: int | None  # None: a route served by its own fields (no deployment rows)
    upstream_id: int
    upstream_name: str
    upstream_model: str
    target: Any  # metering.upstream.UpstreamTarget
    prices: tuple[Any, ...]  # ModelPrice rows of `upstream_model`, as on RouteInfo
    weight: int = 1
    priority: int = 0
    rpm: int | None = None
    tpm: int | None = None


# --- choice ----------------------------------------------------------------------------------


def order(
    deployments: Sequence[DeploymentInfo],
    *,
    healthy: Callable[[DeploymentInfo], bool],
    in_flight: Mapping[str, int],
    draw: float,
) -> list[DeploymentInfo]:
    """The deployments in the order to try them. `draw` is a number in [0, 1) (the shell's
    random draw): it picks by weight, and among equal weights it breaks in-flight ties."""
    if len(deployments) == 1:
        return list(deployments)
    usable = [d for d in deployments if healthy(d)] or list(deployments)
    priorities = sorted({d.priority for d in usable})
    ordered: list[DeploymentInfo] = []
    for priority in priorities:
        group = [d for d in usable if d.priority == priority]
        while group:
            chosen = _pick(group, in_flight, draw)
            ordered.append(chosen)
            group.remove(chosen)
    return ordered


def _pick(group: list[DeploymentInfo], in_flight: Mapping[str, int], draw: float) -> Any:
    if len(group) == 1:
        return group[0]
    weights = {d.weight for d in group}
    if len(weights) == 1:
        fewest = min(in_flight.get(d.key, 0) for d in group)
        tied = [d for d in group if in_flight.get(d.key, 0) == fewest]
        return tied[min(int(draw * len(tied)), len(tied) - 1)]
    total = sum(d.weight for d in group)
    point = draw * total
    for d in group:
        point -= d.weight
        if point < 0:
            return d
    return group[-1]


# --- fallback --------------------------------------------------------------------------------


def failure_of_status(status: int) -> str | None:
    """The failure an answer's status is (then the next candidate is tried), or None."""
    if status == 429 or status >= 500:
        return f"http_{status}"
    return None


def may_try_next(*, attempts: int, max_attempts: int, left: float, candidates_left: int) -> bool:
    """Whether another attempt may start: attempts and candidates left, deadline not reached."""
    return attempts < max_attempts and candidates_left > 0 and left > 0


# --- breaker ---------------------------------------------------------------------------------


@dataclass
class Breaker:
    failures: deque[float] = field(default_factory=deque)
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    """Every deployment's breaker in this process (state only; `now` is given)."""

    def __init__(self, *, failures: int, window: float, cooldown: float) -> None:
        self.threshold = failures
        self.window = window
        self.cooldown = cooldown
        self._breakers: dict[str, Breaker] = {}

    def state(self, key: str, now: float) -> str:
        breaker = self._breakers.get(key)
        if breaker is None or breaker.opened_at is None:
            return CLOSED
        return OPEN if now - breaker.opened_at < self.cooldown else HALF_OPEN

    def healthy(self, key: str, now: float) -> bool:
        """Whether a call may go to `key` now: closed, or half-open with no probe out."""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.opened_at is None:
            return True
        return now - breaker.opened_at >= self.cooldown and not breaker.probing

    def started(self, key: str, now: float) -> None:
        """A call goes to `key`: when half-open, it is the probe."""
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.opened_at is not None:
            breaker.probing = True

    def probe_over(self, key: str) -> None:
        """The call sent to `key` is over; if it was a probe that ended with neither a success
        nor a failure (the client left first), the next call may probe instead."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            breaker.probing = False

    def success(self, key: str) -> bool:
        """The deployment answered; True when that closed its breaker."""
        breaker = self._breakers.get(key)
        if breaker is None:
            return False
        was_open = breaker.opened_at is not None
        breaker.failures.clear()
        breaker.opened_at = None
        breaker.probing = False
        return was_open

    def failure(self, key: str, now: float) -> bool:
        """The deployment failed; True when that opened (or reopened) its breaker."""
        breaker = self._breakers.setdefault(key, Breaker())
        if breaker.opened_at is not None:
            if breaker.probing or now - breaker.opened_at >= self.cooldown:
                breaker.opened_at, breaker.probing = now, False  # the probe failed
                return True
            return False
        breaker.failures.append(now)
        while breaker.failures and breaker.failures[0] <= now - self.window:
            breaker.failures.popleft()
        if len(breaker.failures) >= self.threshold:
            breaker.failures.clear()
            breaker.opened_at = now
            return True
        return False

    def opened_elsewhere(self, key: str, opened_at: float) -> None:
        """Another process opened `key`'s breaker at `opened_at` (same clock base)."""
        breaker = self._breakers.setdefault(key, Breaker())
        if breaker.opened_at is None or (breaker.opened_at < opened_at and not breaker.probing):
            breaker.opened_at = opened_at
            breaker.failures.clear()

    def open_keys(self, now: float) -> list[str]:
        return [key for key in self._breakers if self.state(key, now) != CLOSED]


# --- per-minute limits of a deployment ---------------------------------------------------------


class MinuteLimits:
    """Requests and tokens sent to each deployment in the current minute: by this process
    (`count`), and by the other processes as last read from the shared counters
    (`seen_elsewhere`, total of all processes minus this one's at the read)."""

    def __init__(self) -> None:
        self._minute = -1
        self._counts: dict[str, list[int]] = {}
        self._elsewhere: dict[str, tuple[int, int]] = {}

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute = minute
            self._counts.clear()
            self._elsewhere.clear()

    def room(self, d: DeploymentInfo, tokens: int, now: float) -> bool:
        if d.rpm is None and d.tpm is None:
            return True
        self._roll(now)
        requests, used = self._counts.get(d.key, (0, 0))
        other_requests, other_used = self._elsewhere.get(d.key, (0, 0))
        if d.rpm is not None and requests + other_requests + 1 > d.rpm:
            return False
        return d.tpm is None or used + other_used + tokens <= d.tpm

    def count(self, d: DeploymentInfo, tokens: int, now: float) -> None:
        if d.rpm is None and d.tpm is None:
            return
        self._roll(now)
        counts = self._counts.setdefault(d.key, [0, 0])
        counts[0] += 1
        counts[1] += tokens

    def seen_elsewhere(self, key: str, minute: int, requests: int, tokens: int, now: float) -> None:
        """The shared counters of `key` for `minute` read `requests` and `tokens` (this
        process's own counts included, as far as they had reached them). A read of another
        minute than the current one is stale and ignored."""
        self._roll(now)
        if minute != self._minute:
            return
        mine_requests, mine_tokens = self._counts.get(key, (0, 0))
        self._elsewhere[key] = (max(0, requests - mine_requests), max(0, tokens - mine_tokens))
