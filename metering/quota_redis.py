"""The Redis quota backend: the only module that speaks to Redis for quotas and the usage stream.

Each operation is one Lua script (loaded once, called by hash; redis-py falls back to EVAL and
reloads on NOSCRIPT), so a reserve, a settle or a release is one atomic step and one round trip:

- `reserve`: the per-minute rate limits of the key and the employee, then every budget the call
  draws on (the key's own cap, the allowance, each capped cost center), then the hold.
- `close` (settle and release): moves the hold to `used`, counts tokens per minute, and XADDs the
  usage event to the stream in the same step, so the charge and its event are never apart.
- `sweep`: gives back holds past their 30 minutes; `release dead`: holds of processes whose
  liveness key lapsed, and holds a live process does not have in hand (`holds_release_dead`);
  `abandon`: a hold whose call never started; `adopt`: a database hold of the fallback made a
  Redis hold once Redis is back; `beat`: the liveness key and the list of holds in hand.
- `seed`: creates missing counters from the database (only if still missing, so a burst of
  calls that all found a counter missing seeds it once).
- `reconcile`: sets a counter to the database's value if it did not move meanwhile;
  `reserved recompute`: sets counters' `reserved` to the sum of their open holds.

Counters hold only `used` and `reserved`, as integers: tokens, or USD in units of 1e-10 (the
database's own precision). Limits travel with each call (`KeyInfo.limits`, cached at most 4 s),
so Redis holds nothing that cannot be rebuilt from the database. Lua numbers are doubles: USD
comparisons are exact up to 2**53 units (about $900,000 per counter); above that a comparison
may be off by a few units of 1e-10 USD. Every write to Redis goes through HINCRBY (int64).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from budgets import ledger
from budgets.quota import Hold
from metering.redis_batch import ScriptBatcher

SCALE = 10**10
PLACES = Decimal("1e-10")
STREAM = "tb:usage"
GROUP = "tb-ingest"
HOLDS = "tb:holds"
FORMATS = "tb:usage:formats"  # usage event format tag -> its field names (see usage_stream)
HOLD_TTL = 30 * 60  # seconds a hold lives before `sweep` gives it back (as the database's)
TOMBSTONE_TTL = 24 * 3600  # a closed hold is remembered this long, so a repeated close is a no-op
KEY_COUNTER_TTL = 40 * 24 * 3600  # a key's cap is not per year: idle counters re-seed later

# Errors that mean "Redis is unreachable or unwell", as opposed to a bug in a script.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

_LUA_HELPERS = """
local function int(x) return string.format('%.0f', x) end
"""

RESERVE = (
    _LUA_HELPERS
    + """
-- KEYS: 1 hold, 2 holds index, 3 key rate window, 4 employee rate window, 5.. counters
-- ARGV: 1 hold expiry (unix s), 2 prompt tokens, 3 max output, 4 min output, 5 clamp (1/0),
--       6 key rpm, 7 key tpm, 8 employee rpm, 9 employee tpm (0: none), 10 window ttl,
--       11 retry after, 12 counters, then per counter: limit, input rate, output rate, expire at,
--       then the owner (the process taking the hold, see `process_id`), then the time it was taken
-- Answers 'ok' with each counter's used + reserved once the hold is in (what the database
-- fallback counts as held in Redis should Redis go away: see `quotas`).
local n = tonumber(ARGV[12])
local function seen(counter)
  local v = redis.call('HMGET', counter, 'used', 'reserved')
  return int(tonumber(v[1] or '0') + tonumber(v[2] or '0'))
end
-- A second run for the same hold (a retry after the first answer was lost) changes nothing and
-- answers what the first run answered: only the hold key decides, so a retry never holds twice.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local h = redis.call('HMGET', KEYS[1], 'r', 'm', 'n')
  if not h[1] then return {'lost'} end
  local amounts, seen_now = {}, {}
  for i = 1, tonumber(h[3]) do
    amounts[i] = redis.call('HGET', KEYS[1], 'a' .. i)
    seen_now[i] = seen(KEYS[4 + i])
  end
  return {'ok', tonumber(h[1]), h[2], amounts, seen_now}
end
local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[4 + i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 0 then return {'seed', missing} end

local function limited(key, rpm, tpm)
  if rpm == 0 and tpm == 0 then return false end
  local v = redis.call('HMGET', key, 'n', 't')
  if rpm > 0 and tonumber(v[1] or '0') + 1 > rpm then return 'requests' end
  if tpm > 0 and tonumber(v[2] or '0') >= tpm then return 'tokens' end
  return false
end
local krpm, ktpm = tonumber(ARGV[6]), tonumber(ARGV[7])
local erpm, etpm = tonumber(ARGV[8]), tonumber(ARGV[9])
local over = limited(KEYS[3], krpm, ktpm)
if over then return {'rate', 'key', over, ARGV[11]} end
over = limited(KEYS[4], erpm, etpm)
if over then return {'rate', 'employee', over, ARGV[11]} end

local prompt, maxout = tonumber(ARGV[2]), tonumber(ARGV[3])
local minout, clamp = tonumber(ARGV[4]), ARGV[5] == '1'
local function cost(inr, outr, out) return math.ceil(prompt * inr + out * outr) end
local function fits(avail, inr, outr)
  if avail - cost(inr, 0, 0) < 0 then return -1 end
  local f = maxout
  if outr > 0 then f = math.min(maxout, math.floor((avail - prompt * inr) / outr)) end
  while f >= 0 and cost(inr, outr, f) > avail do f = f - 1 end
  return f
end
local function enough(f)
  if not clamp then return f >= maxout end
  return f >= math.min(minout, maxout)
end

local allowed = maxout
local avail = {}
for i = 1, n do
  local base = 12 + (i - 1) * 4
  local limit, inr, outr = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local v = redis.call('HMGET', KEYS[4 + i], 'used', 'reserved')
  local reserved = tonumber(v[2] or '0')
  avail[i] = limit - tonumber(v[1] or '0') - reserved
  local f = fits(avail[i], inr, outr)
  if not enough(f) then
    local waitable = 0
    if reserved > 0 and enough(fits(avail[i] + reserved, inr, outr)) then waitable = 1 end
    return {'refuse', i, int(math.max(avail[i], 0)), waitable}
  end
  allowed = math.min(allowed, f)
end

local amounts = {}
redis.call('HSET', KEYS[1], 's', 'o', 'n', n, 'p', ARGV[13 + n * 4], 't', ARGV[14 + n * 4])
for i = 1, n do
  local base = 12 + (i - 1) * 4
  local a = cost(tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), allowed)
  amounts[i] = int(a)
  redis.call('HINCRBY', KEYS[4 + i], 'reserved', amounts[i])
  redis.call('EXPIREAT', KEYS[4 + i], ARGV[base + 4])
  redis.call('HSET', KEYS[1], 'k' .. i, KEYS[4 + i], 'a' .. i, amounts[i])
end
redis.call('EXPIRE', KEYS[1], TONUMBER_TTL)
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
for _, w in ipairs({{KEYS[3], krpm + ktpm}, {KEYS[4], erpm + etpm}}) do
  if w[2] > 0 then
    redis.call('HINCRBY', w[1], 'n', 1)
    redis.call('EXPIRE', w[1], ARGV[10])
  end
end
local first = 1
if n > 1 then first = 2 end  -- the allowance follows the key's cap when there is one
local left = int(avail[first] - tonumber(amounts[first]))
redis.call('HSET', KEYS[1], 'r', allowed, 'm', left)
local seen_now = {}
for i = 1, n do seen_now[i] = seen(KEYS[4 + i]) end
return {'ok', allowed, left, amounts, seen_now}
""".replace("TONUMBER_TTL", str(HOLD_TTL + TOMBSTONE_TTL))
)

CLOSE = (
    _LUA_HELPERS
    + """
-- KEYS: 1 hold, 2 holds index, 3 stream, 4 key rate window, 5 employee rate window, 6.. counters
-- ARGV: 1 tokens for the per-minute count (0: none), 2 window ttl, 3 event, 4 tombstone ttl,
--       then per counter: the charge
local s = redis.call('HGET', KEYS[1], 's')
if s == 'c' then return 0 end
for i = 6, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if s == 'o' then
      local held = redis.call('HGET', KEYS[1], 'a' .. (i - 5))
      if held and held ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', int(-tonumber(held))) end
    end
    local charge = ARGV[4 + i - 5]
    if charge ~= '0' then redis.call('HINCRBY', KEYS[i], 'used', charge) end
  end
end
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 's', 'c')
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[1] ~= '0' then
  for _, w in ipairs({KEYS[4], KEYS[5]}) do
    redis.call('HINCRBY', w, 't', ARGV[1])
    redis.call('EXPIRE', w, ARGV[2])
  end
end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
return 1
"""
)

_LUA_RELEASE = """
-- Give an open hold back: its amounts leave the counters' `reserved` and it is marked expired
-- ('x'), so a late settle still charges (without giving the hold back twice).
local function release(h, tombstone_ttl)
  local n = tonumber(redis.call('HGET', h, 'n') or '0')
  for i = 1, n do
    local k, a = redis.call('HGET', h, 'k' .. i), redis.call('HGET', h, 'a' .. i)
    if k and a and a ~= '0' and redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'reserved', int(-tonumber(a)))
    end
  end
  redis.call('HSET', h, 's', 'x')
  redis.call('EXPIRE', h, tombstone_ttl)
end
"""

SWEEP = (
    _LUA_HELPERS
    + _LUA_RELEASE
    + """
-- KEYS: 1 holds index; ARGV: 1 now (unix s), 2 most holds per run, 3 tombstone ttl
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, h in ipairs(due) do
  if redis.call('HGET', h, 's') == 'o' then release(h, ARGV[3]) end
  redis.call('ZREM', KEYS[1], h)
end
return #due
"""
)

RELEASE_DEAD = (
    _LUA_HELPERS
    + _LUA_RELEASE
    + """
-- KEYS: 1 holds index; ARGV: 1 liveness key prefix, 2 start, 3 most holds per run,
--       4 tombstone ttl, 5 open-holds set prefix. Gives back the open holds nobody can close:
--       - dead: the owner's liveness key is gone;
--       - orphaned: the owner is alive, but its last list of the holds it has in hand (written
--         with its liveness key, whose value is the time that list was made) leaves out a hold
--         taken before then (a reserve whose answer never reached it).
--       Holds without an owner or a time (taken by an older version) are left to the sweep.
local holds = redis.call('ZRANGE', KEYS[1], ARGV[2], tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local released, removed, orphans = 0, 0, 0
for _, h in ipairs(holds) do
  local state, owner, taken = unpack(redis.call('HMGET', h, 's', 'p', 't'))
  if state == 'o' and owner then
    local listed = redis.call('GET', ARGV[1] .. owner)
    local orphan = listed and taken and tonumber(taken) < (tonumber(listed) or 0) - 1
      and redis.call('SISMEMBER', ARGV[5] .. owner, h) == 0
    if not listed or orphan then
      release(h, ARGV[4])
      redis.call('ZREM', KEYS[1], h)
      released, removed = released + 1, removed + 1
      if orphan then orphans = orphans + 1 end
    end
  elseif not state then
    redis.call('ZREM', KEYS[1], h)  -- the hold itself is gone: nothing left to give back
    removed = removed + 1
  end
end
return {#holds, released, removed, orphans}
"""
)

BEAT = """
-- KEYS: 1 liveness key, 2 open-holds set; ARGV: 1 ttl, 2 when the list was made (unix s),
--       then the holds this process has in hand. One step, so the list and its time agree.
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
if #ARGV > 2 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return #ARGV - 2
"""

ADOPT = (
    _LUA_HELPERS
    + """
-- KEYS: 1 hold, 2 holds index, 3.. counters; ARGV: 1 expiry (unix s), 2 owner, 3 taken at,
--       4 hold ttl, then per counter the amount held. A database hold taken while Redis was
--       away becomes a Redis hold too, so Redis counts it until its call closes. No limit
--       check: the database ledger admitted it. A hold key that exists (closed already, or
--       adopted) is left alone.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', 0, redis.call('HGET', KEYS[1], 's')} end
local missing = {}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i - 2 end
end
if #missing > 0 then return {'seed', missing} end
redis.call('HSET', KEYS[1], 's', 'o', 'n', #KEYS - 2, 'p', ARGV[2], 't', ARGV[3])
for i = 3, #KEYS do
  local a = ARGV[2 + i]
  if a ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', a) end
  redis.call('HSET', KEYS[1], 'k' .. (i - 2), KEYS[i], 'a' .. (i - 2), a)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return {'done', 1, 'o'}
"""
)

ABANDON = (
    _LUA_HELPERS
    + _LUA_RELEASE
    + """
-- KEYS: 1 hold, 2 holds index; ARGV: 1 tombstone ttl. A hold whose call never started.
if redis.call('HGET', KEYS[1], 's') ~= 'o' then return 0 end
release(KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""
)

RESERVED_RECOMPUTE = """
-- KEYS: 1 holds index, 2.. counters. Sets each existing counter's `reserved` to the sum of the
-- open holds on it (atomically: no hold opens or closes meanwhile). Returns the changes as
-- counter, old, new triples.
local sums = {}
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', h, 's') == 'o' then
    local n = tonumber(redis.call('HGET', h, 'n') or '0')
    for i = 1, n do
      local k, a = redis.call('HGET', h, 'k' .. i), redis.call('HGET', h, 'a' .. i)
      if k and a then sums[k] = (sums[k] or 0) + tonumber(a) end
    end
  end
end
local changed = {}
for i = 2, #KEYS do
  local current = redis.call('HGET', KEYS[i], 'reserved')
  if current then
    local want = string.format('%.0f', sums[KEYS[i]] or 0)
    if current ~= want then
      redis.call('HSET', KEYS[i], 'reserved', want)
      changed[#changed + 1] = KEYS[i]
      changed[#changed + 1] = current
      changed[#changed + 1] = want
    end
  end
end
return changed
"""


SEED = """
-- KEYS: counters; ARGV: per counter its used amount and its expiry (unix s). `reserved` starts
-- at 0: it is the sum of the counter's Redis holds, and none can exist on a missing counter
-- (database holds of the fallback are adopted by their processes: `ADOPT`).
local seeded = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'used', ARGV[2 * i - 1], 'reserved', 0)
    redis.call('EXPIREAT', KEYS[i], ARGV[2 * i])
    seeded = seeded + 1
  end
end
return seeded
"""

RECONCILE = """
-- KEYS: 1 counter; ARGV: 1 used as read, 2 used per the database
if redis.call('HGET', KEYS[1], 'used') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'used', ARGV[2])
return 1
"""


# --- units -----------------------------------------------------------------------------------


def to_units(amount: Decimal, unit: str, *, up: bool = False) -> int:
    """An amount as the integer Redis counts: tokens, or USD in units of 1e-10."""
    if unit == ledger.TOKENS:
        return int(amount.to_integral_value(rounding=ROUND_CEILING if up else ROUND_HALF_EVEN))
    rounding = ROUND_CEILING if up else ROUND_HALF_EVEN
    return int(amount.quantize(PLACES, rounding=rounding) * SCALE)


def from_units(units: int | str, unit: str) -> Decimal:
    value = Decimal(int(units))
    return value if unit == ledger.TOKENS else value / SCALE


def money(amount: Decimal) -> Decimal:
    """A cost at the database's precision (as the DecimalField would store it)."""
    return amount.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def _rate(price: Decimal, unit: str) -> str:
    return "1" if unit == ledger.TOKENS else format(price * SCALE, "f")


def allowance_counter(allowance_id: int) -> str:
    return f"tb:q:a:{allowance_id}"


def key_counter(key_id: int) -> str:
    return f"tb:q:k:{key_id}"


def cost_center_counter(cost_center_id: int, fiscal_year: int) -> str:
    return f"tb:q:c:{cost_center_id}:{fiscal_year}"


def _window(scope: str, ident: int, now: float) -> str:
    return f"tb:rl:{scope}:{ident}:{int(now // 60)}"


# --- this process's liveness and the holds it has in hand -----------------------------------

LIVE_PREFIX = "tb:live:"
OPEN_PREFIX = "tb:open:"
LIVE_TTL = 30  # seconds a process counts as alive after its last heartbeat
LIVE_INTERVAL = 5  # seconds between heartbeats

# The Redis holds this process may still close: added before the reserve is sent (so a hold
# Redis took is listed even if its answer is still on the way), dropped once its close ran in
# Redis or the reserve answered without a hold. Each heartbeat writes the list with its time,
# which is how a hold the process never heard of (a lost answer) is told from a live one.
open_holds: set[str] = set()
# Callbacks run after each heartbeat that reached Redis (the quota layer's hand-over).
after_beat: list[Any] = []


def _new_process_id() -> None:
    global _PROCESS
    _PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    open_holds.clear()


_PROCESS = ""
_new_process_id()
os.register_at_fork(after_in_child=_new_process_id)  # a forked worker is a new owner


def process_id() -> str:
    """This process, as the owner recorded in its holds (new after a fork)."""
    return _PROCESS


async def beat(client: aioredis.Redis, owner: str) -> None:
    """Renew the liveness key with the list of holds in hand (one script run)."""
    listed = [int(time.time()), *open_holds]
    await client.eval(BEAT, 2, LIVE_PREFIX + owner, OPEN_PREFIX + owner, LIVE_TTL, *listed)


async def _heartbeat(client: aioredis.Redis, owner: str) -> None:
    """Keep `tb:live:<owner>` alive while this event loop runs. A process whose key lapsed
    (dead, or unable to reach Redis for LIVE_TTL seconds) has its open holds given back by
    `holds_release_dead`; should it come back, its settles still charge exactly once."""
    while True:
        await asyncio.sleep(LIVE_INTERVAL)
        try:
            await beat(client, owner)
        except (redis.RedisError, OSError):
            continue  # reserves fail meanwhile too (say, a failover); the next beat retries
        for callback in after_beat:
            # Redis going away again is no matter here: the next beat tries again.
            with contextlib.suppress(redis.RedisError, OSError):
                await callback()


async def _alive(state: _AsyncState) -> str:
    """This process's owner id, its liveness key written before its first hold."""
    owner = process_id()
    if state.owner != owner:
        await beat(state.client, owner)
        state.owner = owner
        state.heartbeat = asyncio.ensure_future(_heartbeat(state.client, owner))
    return owner


# --- clients ---------------------------------------------------------------------------------


def _client_options() -> dict[str, Any]:
    # Short timeouts: an unreachable Redis must turn into the down mode quickly, not a hang.
    return {
        "socket_connect_timeout": settings.TB_REDIS_TIMEOUT_MS / 1000,
        "socket_timeout": settings.TB_REDIS_TIMEOUT_MS / 1000,
    }


def _resilient_options() -> dict[str, Any]:
    """A pooled connection can be dead without the pool knowing (Redis restarted since it was
    last used): a command that fails on a connection error is sent once more on a fresh
    connection, and a connection idle for a few seconds is PINGed before use. Only for
    commands that are safe to run twice: every quota script is (a reserve is keyed by its hold,
    a close by the hold's state, the seed writes only missing counters)."""
    return {
        "retry": AsyncRetry(NoBackoff(), 1),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }


HEALTH_CHECK_SECONDS = 2


@dataclass
class _AsyncState:
    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    scripts: dict[str, Any]
    formats: set[str] = field(default_factory=set)
    owner: str = ""
    heartbeat: asyncio.Future | None = None


_async_state: _AsyncState | None = None


def async_client() -> tuple[aioredis.Redis, dict[str, Any]]:
    """This event loop's client and scripts (a connection pool belongs to one loop)."""
    global _async_state
    loop = asyncio.get_running_loop()
    if _async_state is None or _async_state.loop is not loop:
        # A blocking pool: a burst beyond its size waits for a free connection instead of
        # failing with "too many connections" (which would read as Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=256,
            timeout=settings.TB_REDIS_TIMEOUT_MS / 1000,
            **_client_options(),
            **_resilient_options(),
        )
        client = aioredis.Redis(connection_pool=pool)
        # Reserve and close run once per call: concurrent calls' runs share pipelines.
        batcher = ScriptBatcher(client)
        scripts = {
            "reserve": batcher.wrap(client.register_script(RESERVE)),
            "close": batcher.wrap(client.register_script(CLOSE)),
            "seed": client.register_script(SEED),
            "adopt": client.register_script(ADOPT),
            "abandon": client.register_script(ABANDON),
        }
        _async_state = _AsyncState(loop, client, scripts)
    return _async_state.client, _async_state.scripts


_sync_client: redis.Redis | None = None


def sync_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        # No retry here: the stream consumer reads through this client, and an XREADGROUP
        # sent twice is not a no-op (the first read's entries would wait for a claim).
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, **_client_options())
    return _sync_client


def consumer_client(block_ms: int) -> redis.Redis:
    """A client for the stream consumer: its reads block up to `block_ms`, so its socket
    timeout must be longer than that (else every idle read would look like Redis being down)."""
    options = _client_options()
    options["socket_timeout"] = block_ms / 1000 + options["socket_timeout"]
    return redis.Redis.from_url(settings.REDIS_URL, **options)


# --- the hold --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisHold:
    """A hold taken in Redis; `counters` are the budgets it is held on, in reserve order."""

    hold: Hold
    key_id: int
    key_tokens: int
    employee_id: int
    counters: tuple[str, ...]
    units: tuple[str, ...]  # each counter's unit (tokens or usd)
    backend: str = "redis"
    amounts: tuple[int, ...] = ()  # held on each counter, in Redis units
    seen: tuple[int, ...] = ()  # each counter's used + reserved once the hold was in

    @property
    def key(self) -> str:
        return hold_key(self.hold.reservation_id)


def hold_key(hold_id: uuid.UUID) -> str:
    return f"tb:h:{hold_id.hex}"


# Holds whose reserve was sent but never answered (Redis went away meanwhile): Redis may have
# taken them. Not in `open_holds`, so the sweep finds them as orphans; the quota layer also
# gives them back itself as soon as Redis answers again.
uncertain_holds: set[str] = set()


@dataclass(frozen=True)
class RateLimited:
    scope: str  # "key" or "employee"
    kind: str  # "requests" or "tokens"
    retry_after: int


@dataclass(frozen=True)
class Budget:
    counter: str
    code: str
    unit: str
    limit: Decimal
    expire_at: int


def budgets_for(info: Any, now: float) -> list[Budget]:
    """The budgets a call with this key draws on, in the database backend's order."""
    limits = info.limits
    assert limits is not None
    period_end = dt.datetime.combine(limits.period_end, dt.time(), tzinfo=dt.UTC)
    expire_at = int(period_end.timestamp()) + 7 * 24 * 3600
    found: list[Budget] = []
    if info.cap_tokens is not None:
        found.append(
            Budget(
                key_counter(info.key_id),
                "key_cap",
                ledger.TOKENS,
                Decimal(info.cap_tokens),
                int(now) + KEY_COUNTER_TTL,
            )
        )
    found.append(
        Budget(
            allowance_counter(limits.allowance_id),
            "employee_allowance",
            limits.unit,
            limits.limit,
            expire_at,
        )
    )
    for cost_center_id, code, cap in limits.cost_center_caps:
        found.append(
            Budget(
                cost_center_counter(cost_center_id, limits.fiscal_year),
                f"cost_center_cap:{code}",
                ledger.USD,
                cap,
                expire_at,
            )
        )
    return found


async def reserve(
    *,
    info: Any,
    estimate: ledger.CallEstimate,
    min_output_tokens: int,
    seed: Any,
) -> RedisHold | ledger.Refusal | RateLimited:
    """Take the call's hold in one script run. `seed(budgets)` is awaited when counters are
    missing (it loads them from the database and runs the seed script), then the reserve
    runs again."""
    client, scripts = async_client()
    assert _async_state is not None
    owner = await _alive(_async_state)
    now = time.time()
    budgets = budgets_for(info, now)
    hold_id = uuid.uuid4()
    key = hold_key(hold_id)
    keys = [
        key,
        HOLDS,
        _window("k", info.key_id, now),
        _window("e", info.employee_id, now),
        *(b.counter for b in budgets),
    ]
    args: list[Any] = [
        int(now) + HOLD_TTL,
        estimate.prompt_tokens,
        estimate.max_output_tokens,
        min_output_tokens,
        1 if info.clamp else 0,
        info.requests_per_minute or 0,
        info.tokens_per_minute or 0,
        info.requests_per_minute or 0,
        info.tokens_per_minute or 0,
        120,
        max(1, 60 - int(now) % 60),
        len(budgets),
    ]
    for budget in budgets:
        args += [
            to_units(budget.limit, budget.unit),
            _rate(estimate.input_price_per_token, budget.unit),
            _rate(estimate.output_price_per_token, budget.unit),
            budget.expire_at,
        ]
    args += [owner, int(now)]
    open_holds.add(key)
    try:
        for _ in range(3):
            result = await scripts["reserve"](keys=keys, args=args, client=client)
            status = _text(result[0])
            if status != "seed":
                break
            await seed([budgets[int(i) - 1] for i in result[1]])
    except BaseException:
        # Redis went away (or the task was cancelled) with the answer unknown: Redis may hold
        # it. Left out of `open_holds`, so the sweep can tell it is nobody's.
        open_holds.discard(key)
        uncertain_holds.add(key)
        raise
    if status != "ok":
        open_holds.discard(key)
    if status == "rate":
        return RateLimited(_text(result[1]), _text(result[2]), int(result[3]))
    if status == "refuse":
        budget = budgets[int(result[1]) - 1]
        return ledger.Refusal(
            code=budget.code,
            available=from_units(result[2], budget.unit),
            unit=budget.unit,
            waitable=bool(int(result[3])),
        )
    if status != "ok":
        raise redis.ResponseError(f"reserve: unexpected answer {result!r}")
    output_tokens = int(result[1])
    amounts = [int(a) for a in result[3]]
    allowance_at = 1 if info.cap_tokens is not None else 0
    unit = info.limits.unit
    hold = Hold(
        reservation_id=hold_id,
        allowance_id=info.limits.allowance_id,
        unit=unit,
        amount=from_units(amounts[allowance_at], unit),
        tokens=estimate.prompt_tokens + output_tokens,
        cost=estimate.cost(output_tokens),
        output_tokens=output_tokens,
        clamped=output_tokens < estimate.max_output_tokens,
        cost_center_ids=tuple(c for c, _, _ in info.limits.cost_center_caps),
        fiscal_year=info.limits.fiscal_year,
        # Counted from the grant, like the database ledger (the script counts from the limit,
        # which includes a soft overage).
        remaining=from_units(result[2], unit) - (info.limits.limit - info.limits.granted),
    )
    return RedisHold(
        hold=hold,
        key_id=info.key_id,
        key_tokens=amounts[0] if allowance_at else 0,
        employee_id=info.employee_id,
        counters=tuple(b.counter for b in budgets),
        units=tuple(b.unit for b in budgets),
        amounts=tuple(amounts),
        seen=tuple(int(v) for v in result[4]),
    )


async def close(
    *, held: RedisHold, tokens: int, cost: Decimal, event: str, count_tokens: bool
) -> bool:
    """Settle (tokens and cost > 0) or release (zeros) the hold and append `event` to the
    usage stream, atomically. False when the hold was already closed."""
    client, scripts = async_client()
    now = time.time()
    keys = [
        f"tb:h:{held.hold.reservation_id.hex}",
        HOLDS,
        STREAM,
        _window("k", held.key_id, now),
        _window("e", held.employee_id, now),
        *held.counters,
    ]
    charges = [
        str(tokens) if unit == ledger.TOKENS else str(to_units(cost, unit)) for unit in held.units
    ]
    args = [tokens if count_tokens else 0, 120, event, TOMBSTONE_TTL, *charges]
    closed = bool(await scripts["close"](keys=keys, args=args, client=client))
    open_holds.discard(keys[0])
    return closed


async def adopt(*, held: RedisHold, budgets: list[Budget], seed: Any) -> bool:
    """Make a database hold (taken while Redis was away, call still running) a Redis hold of
    this process, so Redis counts it until `close` (on the same key) settles it. False when
    that key was closed already."""
    client, scripts = async_client()
    assert _async_state is not None
    owner = await _alive(_async_state)
    now = int(time.time())
    keys = [held.key, HOLDS, *held.counters]
    args = [now + HOLD_TTL, owner, now, HOLD_TTL + TOMBSTONE_TTL, *held.amounts]
    open_holds.add(held.key)
    for _ in range(3):
        result = await scripts["adopt"](keys=keys, args=args, client=client)
        if _text(result[0]) != "seed":
            break
        await seed([budgets[int(i) - 1] for i in result[1]])
    if _text(result[2]) != "o":
        open_holds.discard(held.key)
    return bool(int(result[1]))


async def give_back(key: str) -> bool:
    """Give back a hold this process may have taken without knowing it (`uncertain_holds`)."""
    _, scripts = async_client()
    released = bool(await scripts["abandon"](keys=[key, HOLDS], args=[TOMBSTONE_TTL]))
    uncertain_holds.discard(key)
    return released


async def format_register(tag: str, names: str) -> None:
    """Record the field names behind a usage event format tag (once per process), so that a
    consumer of another version can read this process's events by name."""
    client, _ = async_client()
    assert _async_state is not None
    if tag not in _async_state.formats:
        await client.hset(FORMATS, tag, names)
        _async_state.formats.add(tag)


async def seed_counters(values: list[tuple[str, int, int]]) -> int:
    """Create the counters that are still missing: (name, used, expire at)."""
    client, scripts = async_client()
    args: list[Any] = []
    for _, used, expire_at in values:
        args += [used, expire_at]
    return int(await scripts["seed"](keys=[v[0] for v in values], args=args, client=client))


def holds_sweep(*, now: float | None = None, limit: int = 1000) -> int:
    """Give back holds whose calls never closed (the process died). Safe to run any time."""
    client = sync_client()
    script = client.register_script(SWEEP)
    return int(script(keys=[HOLDS], args=[int(now or time.time()), limit, TOMBSTONE_TTL]))


def holds_release_dead(*, limit: int = 1000) -> int:
    """Give back the open holds nobody can close: those of processes that are gone (their
    liveness key lapsed: see `_heartbeat`), however young, and those a live process does not
    have in hand (taken before its last list of open holds and missing from it: a reserve
    whose answer was lost). Safe to run any time. Returns how many."""
    client = sync_client()
    script = client.register_script(RELEASE_DEAD)
    released = start = 0
    while True:
        seen, count, removed, _ = script(
            keys=[HOLDS], args=[LIVE_PREFIX, start, limit, TOMBSTONE_TTL, OPEN_PREFIX]
        )
        released += int(count)
        if int(seen) < limit:
            return released
        start += int(seen) - int(removed)  # removed holds left the index


def reserved_recompute(names: list[str], *, chunk: int = 1000) -> list[tuple[str, int, int]]:
    """Set the counters' `reserved` to the sum of the open holds on them; returns (counter,
    old, new) for each one that was off. Each chunk of counters is one script run, exact on its
    own (the sums are taken in the same step), so Redis is never blocked for long."""
    client = sync_client()
    script = client.register_script(RESERVED_RECOMPUTE)
    changed: list[tuple[str, int, int]] = []
    for start in range(0, len(names), chunk):
        answer = script(keys=[HOLDS, *names[start : start + chunk]])
        changed += [
            (_text(answer[i]), int(answer[i + 1]), int(answer[i + 2]))
            for i in range(0, len(answer), 3)
        ]
    return changed


async def abandon(*, held: RedisHold) -> bool:
    """Give back a hold whose call never started (its caller left during the reserve)."""
    _, scripts = async_client()
    released = bool(await scripts["abandon"](keys=[held.key, HOLDS], args=[TOMBSTONE_TTL]))
    open_holds.discard(held.key)
    return released


def counter_set_if_unchanged(name: str, read: str, value: int) -> bool:
    client = sync_client()
    script = client.register_script(RECONCILE)
    return bool(script(keys=[name], args=[read, value]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
