"""Usage events: their wire form (`events`), their idempotent application to the database
(`apply`), the stream consumer (`consumer`), poison-proof intake (`poison`: what cannot be
written as it came; `intake`: per-entry preparation, bisection of a refused batch, dead
letters; `dead_letters`: counts and replay). The Redis counters are reconciled with the
database by the quota (`metering.quota.reconcile`).

An event is one closed call: its usage record plus the charges the Redis backend made for it.
`usage_events_apply` inserts the records with ON CONFLICT (request_id) DO NOTHING and applies
the charges of exactly the records it inserted, in the same transaction: the insert decides, so
an event delivered twice (a consumer died before XACK) is charged once. The database stays the
source of truth: `Allowance.used`, `CostCenterSpend.spent` and `VirtualKey.used_tokens` move
only here (or on the database backend's own path).
"""

from metering.usage_stream.apply import Totals, usage_events_apply, usage_payloads_apply
from metering.usage_stream.consumer import (
    StreamLag,
    consumer_name,
    group_ensure,
    stream_drain,
    stream_entries_apply,
    stream_lag,
    stream_trim,
)
from metering.usage_stream.dead_letters import Replay, dead_letter_counts, dead_letters_replay
from metering.usage_stream.events import (
    FORMAT,
    Charge,
    UsageEvent,
    event_decode,
    event_encode,
    format_names,
)

__all__ = [
    "FORMAT",
    "Charge",
    "Replay",
    "StreamLag",
    "Totals",
    "UsageEvent",
    "consumer_name",
    "dead_letter_counts",
    "dead_letters_replay",
    "event_decode",
    "event_encode",
    "format_names",
    "group_ensure",
    "stream_drain",
    "stream_entries_apply",
    "stream_lag",
    "stream_trim",
    "usage_events_apply",
    "usage_payloads_apply",
]
