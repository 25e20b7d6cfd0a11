import pytest

from metering.translate.limits import DependentLimits, dependent_limits

THINK = {"type": "enabled", "budget_tokens": 31999}


@pytest.mark.parametrize(
    ("endpoint", "body", "limit", "expected"),
    [
        # The case: 32,000 clamped to 7,766 kept budget 31,999.
        (
            "messages",
            {"max_tokens": 32000, "thinking": THINK},
            7766,
            DependentLimits(
                updates={"max_tokens": 7766, "thinking": {"type": "enabled", "budget_tokens": 7765}}
            ),
        ),
        # A budget already below the clamp stays.
        (
            "messages",
            {"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 2048}},
            7766,
            DependentLimits(updates={"max_tokens": 7766}),
        ),
        # Budget equal to the clamp: must be strictly below.
        (
            "messages",
            {"max_tokens": 5000, "thinking": {"type": "enabled", "budget_tokens": 4000}},
            4000,
            DependentLimits(
                updates={"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 3999}}
            ),
        ),
        # Smallest valid: limit 1025 -> budget 1024.
        (
            "messages",
            {"max_tokens": 9000, "thinking": THINK},
            1025,
            DependentLimits(
                updates={"max_tokens": 1025, "thinking": {"type": "enabled", "budget_tokens": 1024}}
            ),
        ),
        # Nothing fits: budget would be 1023.
        ("messages", {"max_tokens": 9000, "thinking": THINK}, 1024, "refused"),
        ("messages", {"max_tokens": 9000, "thinking": THINK}, 10, "refused"),
        # Disabled / adaptive thinking carries no budget.
        (
            "messages",
            {"max_tokens": 9000, "thinking": {"type": "disabled"}},
            10,
            DependentLimits(updates={"max_tokens": 10}),
        ),
        (
            "messages",
            {"max_tokens": 9000, "thinking": {"type": "adaptive"}},
            10,
            DependentLimits(updates={"max_tokens": 10}),
        ),
        # Under the limit already: nothing to change.
        ("messages", {"max_tokens": 100}, 7766, DependentLimits()),
        # OpenAI chat: both names lowered together; an absent one is not added.
        (
            "chat",
            {"max_tokens": 9000, "max_completion_tokens": 8000},
            500,
            DependentLimits(updates={"max_tokens": 500, "max_completion_tokens": 500}),
        ),
        (
            "chat",
            {"max_tokens": 9000, "max_completion_tokens": 300},
            500,
            DependentLimits(updates={"max_tokens": 500}),
        ),
        ("chat", {"max_completion_tokens": 300}, 500, DependentLimits()),
        ("chat", {}, 500, DependentLimits()),
        # Reasoning effort that would spend a small limit thinking is lowered.
        (
            "chat",
            {"max_completion_tokens": 9000, "reasoning_effort": "high"},
            2000,
            DependentLimits(updates={"max_completion_tokens": 2000, "reasoning_effort": "low"}),
        ),
        (
            "chat",
            {"max_completion_tokens": 9000, "reasoning_effort": "minimal"},
            2000,
            DependentLimits(updates={"max_completion_tokens": 2000}),
        ),
        (
            "chat",
            {"max_completion_tokens": 90000, "reasoning_effort": "high"},
            5000,
            DependentLimits(updates={"max_completion_tokens": 5000}),
        ),
        (
            "responses",
            {"max_output_tokens": 9000, "reasoning": {"effort": "medium", "summary": "auto"}},
            1000,
            DependentLimits(
                updates={
                    "max_output_tokens": 1000,
                    "reasoning": {"effort": "low", "summary": "auto"},
                }
            ),
        ),
        ("embeddings", {"input": "x"}, 5, DependentLimits()),
        ("chat", {"max_tokens": 9}, 0, "refused"),
    ],
)
def test_dependent_limits(endpoint, body, limit, expected):
    before = repr(body)
    result = dependent_limits(endpoint, body, limit)
    assert repr(body) == before  # the body itself is never changed
    if expected == "refused":
        assert result.updates == {}
        assert result.refusal
    else:
        assert result == expected


def test_refusal_names_the_numbers():
    result = dependent_limits("messages", {"max_tokens": 9000, "thinking": THINK}, 900)
    assert "900" in result.refusal and "1024" in result.refusal
