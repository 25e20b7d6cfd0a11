"""What the mock saw and served: recent request records and its own ledger.

The ledger is the mock's own account, by the proxy's request id (x-request-id), of every
answer served in full and every stream cut after some output: what a metering proxy must
have recorded. Token counting (count_tokens) is never in it: nothing is produced or billed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    completed: bool = False
    disconnected: bool = False
    received_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "received_at": self.received_at,
        }


class Ledger:
    """The recent requests (the last 200) and the served / cut accounts."""

    def __init__(self) -> None:
        self.records: deque[Record] = deque(maxlen=200)
        # request id -> (input, output) tokens of every answer served in full
        self.served: dict[str, tuple[int, int]] = {}
        # request id -> (input, output produced, why) of every stream cut after some output
        self.cut: dict[str, tuple[int, int, str]] = {}
        self.last: Record | None = None
        self.counted = 0  # count_tokens answers (never billed)

    def saw(self, record: Record) -> None:
        self.records.append(record)
        self.last = record

    def clear_records(self) -> None:
        self.records.clear()
        self.last = None

    def clear(self) -> None:
        self.served.clear()
        self.cut.clear()
        self.counted = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": len(self.served),
            "input_tokens": sum(i for i, _ in self.served.values()),
            "output_tokens": sum(o for _, o in self.served.values()),
            "requests": {rid: list(used) for rid, used in self.served.items()},
            "cut": {rid: list(used) for rid, used in self.cut.items()},
            "counted": self.counted,
        }
