"""An incremental Server-Sent Events splitter (pure: no I/O, no Django).

Upstream streams arrive in arbitrary chunks: an event can be split anywhere, even between the
CR and LF of a line end, and one chunk can hold many events. `SSESplitter` buffers only the
unfinished tail and hands back each complete event with its raw bytes, so a caller can relay
events byte for byte or drop one of them (the usage-only chunk the proxy asked for itself).

Framing follows the WHATWG SSE rules: lines end with CRLF, LF or CR; a blank line ends an event;
`data:` lines are joined with LF; a single space after the colon is removed; lines starting with
a colon are comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A complete line. A lone CR at the very end of the buffer is not accepted as a line end yet,
# because the LF of a CRLF may be in the next chunk.
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\n|\r(?=[^\n]))")
_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass(slots=True)
class SSEEvent:
    """One dispatched block. `data` is None for blocks without data lines (comments, pings
    written as comments): the SSE spec dispatches nothing for them, but their bytes still have
    to be relayed."""

    event: str
    data: str | None
    raw: bytes


class SSESplitter:
    """Feed bytes, get complete events.

    With `keep_raw=False` the `raw` field is left empty and parsed lines are dropped at once,
    which saves copying when the caller relays the chunks unchanged anyway. With `keep_raw=True`
    the concatenated `raw` of all events returned by `feed` and `close` equals the input.
    """

    __slots__ = ("_buf", "_data", "_event", "_keep_raw", "_scan")

    def __init__(self, *, keep_raw: bool = True) -> None:
        self._keep_raw = keep_raw
        self._buf = b""  # the undispatched bytes (from the current event's start if keep_raw)
        self._scan = 0  # offset in _buf of the first byte not yet parsed into lines
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Complete events found once `chunk` is appended, in stream order."""
        buf = self._buf + chunk if self._buf else chunk
        if self._scan == 0 and b"\r" not in buf and not self._data and not self._event:
            return self._feed_lf(buf)
        return self._feed_lines(buf)

    def _feed_lf(self, buf: bytes) -> list[SSEEvent]:
        # The common case (LF line ends, no half-parsed event): split on blank lines in C
        # rather than matching line by line. A block's only possible empty lines are leading
        # ones (from three or more LFs in a row), which dispatch nothing and are skipped.
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        events = []
        keep = self._keep_raw
        for block in blocks:
            for line in block.split(b"\n"):
                if line:
                    self._field(line)
            events.append(self._dispatch(block + b"\n\n" if keep else b""))
        return events

    def _feed_lines(self, buf: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        pos = self._scan
        start = 0  # where the current event's bytes begin in buf
        match = _LINE.match
        while (m := match(buf, pos)) is not None:
            pos = m.end()
            line = m.group(1)
            if line:
                self._field(line)
            else:
                events.append(self._dispatch(buf[start:pos] if self._keep_raw else b""))
                start = pos
        if not self._keep_raw:
            start = pos
        self._buf = buf[start:]
        self._scan = pos - start
        return events

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream: a last line without its line end (or ending in a lone CR),
        and an event without its terminating blank line, are still delivered."""
        # What remains unparsed has no blank line except leading ones (which dispatch nothing):
        # a partial last line, possibly ending in a lone CR, or whole lines of an event whose
        # blank line never came.
        for line in _LINE_END.split(self._buf[self._scan :]):
            if line:
                self._field(line)
        events = []
        if self._data or self._event or self._buf:
            events.append(self._dispatch(self._buf if self._keep_raw else b""))
        self._buf = b""
        self._scan = 0
        return events

    # -- internals ------------------------------------------------------------------------

    def _field(self, line: bytes) -> None:
        if line.startswith(b"data: "):  # by far the most common line
            self._data.append(line[6:].decode("utf-8", "replace"))
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self, raw: bytes) -> SSEEvent:
        event = SSEEvent(self._event, "\n".join(self._data) if self._data else None, raw)
        self._event = ""
        self._data = []
        return event
