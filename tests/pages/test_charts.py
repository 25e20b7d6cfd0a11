"""The SVG charts: labelled, escaped, and scaled to their data."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from budgets.charts import Bar, Series, bar_chart, compact, line_chart


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (999, "999"), (1000, "1k"), (1250, "1.3k"), (2_000_000, "2M"),
     (Decimal("0.5"), "0.5"), (-1500, "-1.5k"), (3 * 10**9, "3B"), (999_960, "1M")],
)  # fmt: skip
def test_compact(value: int | Decimal, text: str) -> None:
    assert compact(value) == text


def test_line_chart_has_an_accessible_name_and_escapes_labels() -> None:
    start, end = dt.date(2026, 1, 1), dt.date(2026, 12, 31)
    svg = line_chart(
        [Series("<b>remaining</b>", [(start, 100), (dt.date(2026, 6, 1), 40)])],
        title='Left "now"', desc="falls", start=start, end=end,
        marks=[(dt.date(2026, 6, 1), "today")],
    )  # fmt: skip
    assert 'role="img"' in svg and 'aria-label="Left &quot;now&quot;"' in svg
    assert "<b>" not in svg and "&lt;b&gt;remaining" in svg
    assert ">today<" in svg and ">Jan<" in svg and ">Dec<" in svg


def test_bar_chart_longest_bar_is_the_largest_value() -> None:
    svg = bar_chart([Bar("a", 100), Bar("b", 50)], title="t", desc="d")
    widths = [
        float(part.split('"')[0])
        for part in svg.split('<rect x="150" y="')[1:]
        for part in [part.split('width="')[1]]
    ]
    assert widths[0] == 2 * widths[1]


def test_the_largest_bar_leaves_room_for_its_value() -> None:
    note = "cost $1,234.56 over 12 months"
    svg = bar_chart([Bar("a", 100, note=note), Bar("b", 50)], title="t", desc="d", width=520)
    drawn = int(svg.split('viewBox="0 0 ')[1].split(" ")[0])
    first = svg.split('<rect x="150" y="')[1]
    end_of_bar = 150 + float(first.split('width="')[1].split('"')[0])
    assert drawn - end_of_bar - 6 >= len(f"100 · {note}") * 13 * 0.6


def test_chart_keeps_its_drawn_size_at_most_and_scrolls_when_narrow() -> None:
    """Text in a chart stays the page's size: the SVG never grows past its drawn width, and a
    narrow screen scrolls a focusable box instead of shrinking the labels."""
    svg = bar_chart([Bar("a", 100, text="$100")], title="t", desc="d", width=520)
    assert 'style="max-width:520px"' in svg and 'width="520"' in svg
    assert svg.startswith('<div class="chart-box" tabindex="0"') and ">$100<" in svg


def test_empty_data_still_draws() -> None:
    svg = line_chart([], title="t", desc="d", start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 2))
    assert "<svg" in svg and svg.endswith("</svg></div>")


@pytest.mark.parametrize(
    ("top", "axis_max"),
    [(Decimal("0.4000000000"), "0.5"), (Decimal("0.40"), "0.5"), (Decimal(1234), "2000"),
     (Decimal("7.5"), "10"), (Decimal("0.0012"), "0.002"), (Decimal(0), "1")],
)  # fmt: skip
def test_the_axis_ends_at_a_round_figure_above_the_largest_value(
    top: Decimal, axis_max: str
) -> None:
    """Ledger amounts carry ten decimal places: the axis follows the value, not its zeros."""
    start = dt.date(2026, 1, 1)
    svg = line_chart(
        [Series("spend", [(start, top)])], title="t", desc="d", start=start,
        end=dt.date(2026, 1, 31),
    )  # fmt: skip
    assert f">{compact(Decimal(axis_max))}</text>" in svg
