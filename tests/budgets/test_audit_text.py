"""The audit trail's 'what changed' line, as the employee page, the policy editor and the admin
overview show it."""

from __future__ import annotations

import pytest

from budgets.page_selectors import audit_changes

ENERGY = {
    "source": "EcoLogits 0.11.3",
    "reference": "openai/gpt-4o",
    "wh_per_1k_output_range": ["1.43", "2.39"],
    "method": "marginal Wh of 1,000 output tokens",
}


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            {"amount": "1000.0000000000"},
            {"amount": "2500000.0000000000"},
            "amount: 1,000 → 2,500,000",
        ),
        (
            {"energy_wh_per_1k_output": None},
            {"energy_wh_per_1k_output": "1.91"},
            "energy_wh_per_1k_output: — → 1.91",
        ),
        ({"active": True}, {"active": False}, "active: yes → no"),
        ({"cost_center_id": 7}, {"cost_center_id": 12}, "cost_center_id: 7 → 12"),
        (
            None,
            {"downgrade_models": {"gpt-4o": "gpt-4o-mini"}},
            "downgrade_models: {gpt-4o → gpt-4o-mini}",
        ),
        (
            {},
            {"energy_source": ENERGY},
            "energy_source: {source, reference, wh_per_1k_output_range, …}",
        ),
        ({"name": "a", "updated_at": "x"}, {"name": "a", "updated_at": "y"}, ""),
    ],
)
def test_changes_read_as_words_and_plain_numbers(before, after, expected) -> None:
    assert audit_changes(before, after) == expected
