"""Server-rendered SVG charts for the pages: pure functions from numbers to markup, no I/O.

Charts are drawn in Python rather than with a JavaScript library so that every page works
without scripts, nothing has to be vendored, and the markup can carry its own accessible name
(`role="img"` with a `<title>` and `<desc>`). Every chart on a page is paired with a table of
the same numbers; the chart is the glance, the table is the record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

from django.utils.safestring import SafeString, mark_safe

from budgets.formatting import compact

__all__ = ["Bar", "Series", "bar_chart", "compact", "line_chart"]

# A palette that stays distinguishable for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")

type Number = int | Decimal


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[dt.date, Number]]
    dashed: bool = False
    color: str = ""


@dataclass(frozen=True)
class Bar:
    label: str
    value: Number
    note: str = ""  # shown after the value, e.g. a cost next to a token count
    text: str = ""  # the printed value when it is not a plain count (money: "$1.8k")


def _nice_max(value: Decimal) -> Decimal:
    """Round the axis maximum up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return Decimal(1)
    # The place of the leading digit, whatever trailing zeros the Decimal carries (a ledger's
    # Decimal('0.4000000000') is 0.4, not a figure in the tenth decimal place).
    base = Decimal(10) ** value.adjusted()
    for step in (1, 2, 5, 10):
        if value <= base * step:
            return base * step
    return base * 10


def _text_width(text: str, size: int = 13) -> int:
    """A generous estimate of the drawn width of `text` at `size` px in the page's sans-serif
    (digits and most letters are about 0.6 em; no font metrics on the server)."""
    return round(len(text) * size * 0.6)


def _svg(width: int, height: int, title: str, desc: str, body: list[str], kind: str) -> SafeString:
    """The chart at its drawn size at most (so its text stays the page's size, never twice
    it), shrinking with the card down to the CSS minimum of its kind; below that the box
    scrolls sideways (focusable, so a keyboard can scroll it too) instead of shrinking the text
    out of reach."""
    return mark_safe(  # every interpolated text is escaped above
        f'<div class="chart-box" tabindex="0" role="group" aria-label="{escape(title)}">'
        f'<svg class="chart {kind}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" style="max-width:{width}px" role="img" '
        f'aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMinYMid meet">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>{''.join(body)}</svg></div>"
    )


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    desc: str,
    start: dt.date,
    end: dt.date,
    marks: Sequence[tuple[dt.date, str]] = (),
    prefix: str = "",
    width: int = 960,
    height: int = 300,
) -> SafeString:
    """Lines over a date axis from `start` to `end`, with optional labelled vertical marks;
    `prefix` goes before the axis values (a currency sign)."""
    left, right, top, bottom = 56, 16, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [Decimal(v) for s in series for _, v in s.points]
    top_value = _nice_max(max(values, default=Decimal(0)))
    span = max((end - start).days, 1)

    def x(day: dt.date) -> float:
        return left + plot_w * min(max((day - start).days, 0), span) / span

    def y(value: Number) -> float:
        return top + plot_h - float(plot_h * Decimal(value) / top_value)

    body: list[str] = []
    for i in range(5):
        tick = top_value * i / 4
        body.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}"/><text class="axis" x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{prefix}{compact(tick)}</text>'
        )
    month = start.replace(day=1)
    while month <= end:
        if month >= start:
            body.append(
                f'<text class="axis" x="{x(month):.1f}" y="{height - 12}" '
                f'text-anchor="middle">{month:%b}</text>'
            )
        month = (month + dt.timedelta(days=32)).replace(day=1)
    for index, (day, label) in enumerate(marks):
        if start <= day <= end:
            # Labels in the last quarter read leftwards so the card's edge never cuts them;
            # each further mark drops a line so two close marks do not print over each other.
            late = x(day) > left + plot_w * 3 / 4
            label_x = x(day) - 4 if late else x(day) + 4
            anchor = ' text-anchor="end"' if late else ""
            body.append(
                f'<line class="mark" x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{top}" '
                f'y2="{top + plot_h}"/><text class="mark-label" x="{label_x:.1f}" '
                f'y="{top + 12 + 14 * index}"{anchor}>{escape(label)}</text>'
            )
    for index, s in enumerate(series):
        if not s.points:
            continue
        color = s.color or PALETTE[index % len(PALETTE)]
        path = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        body.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2.5"{dash} points="{path}">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
    return _svg(width, height, title, desc, body, "line")


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    desc: str,
    width: int = 520,
    row: int = 30,
    color: str = "",
) -> SafeString:
    """Horizontal bars in the order given, each labelled with its value; one `color` for bars
    of one series (months of a trend), else a colour per bar. The bars leave room for the
    longest value text, so the largest bar's value is never cut off."""
    values = [(b.text or compact(b.value)) + (f" · {b.note}" if b.note else "") for b in bars]
    label_w = 150
    value_w = max(120, _text_width(max(values, key=len, default="")) + 12)
    plot_w = max(width - label_w - value_w, 60)
    width = label_w + plot_w + value_w
    height = max(row * len(bars), row) + 8
    top_value = max((Decimal(b.value) for b in bars), default=Decimal(0)) or Decimal(1)
    body: list[str] = []
    for index, bar in enumerate(bars):
        y = 4 + index * row
        length = max(float(plot_w * Decimal(bar.value) / top_value), 1.0)
        fill = color or PALETTE[index % len(PALETTE)]
        value = values[index]
        body.append(
            f'<text class="bar-label" x="{label_w - 8}" y="{y + row / 2 + 4:.0f}" '
            f'text-anchor="end">{escape(bar.label[:22])}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row - 10}" '
            f'rx="3" fill="{fill}"><title>{escape(bar.label)}: {escape(value)}</title></rect>'
            f'<text class="bar-value" x="{label_w + length + 6:.1f}" '
            f'y="{y + row / 2 + 4:.0f}">{escape(value)}</text>'
        )
    return _svg(width, height, title, desc, body, "bars")
