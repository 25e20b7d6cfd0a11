import pytest

from metering.providers.anthropic import messages_usage
from metering.providers.base import Usage
from metering.providers.openai import chat_usage
from metering.translate.usage import anthropic_usage_to_chat, chat_usage_to_anthropic

ANTHROPIC = [
    ({"input_tokens": 10, "output_tokens": 5}, Usage(10, 5, 0, 0, 0)),
    (
        {
            "input_tokens": 7,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 90,
            "output_tokens": 40,
            "output_tokens_details": {"thinking_tokens": 25},
        },
        Usage(100, 40, 90, 3, 25),
    ),
    ({"input_tokens": 0, "output_tokens": 0}, Usage(0, 0, 0, 0, 0)),
]
CHAT = [
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, Usage(10, 5, 0, 0, 0)),
    (
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "total_tokens": 140,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 30},
        },
        Usage(100, 40, 64, 0, 30),
    ),
    # Thinking counted only in total_tokens (Gemini-style layers) is output, once.
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 25}, Usage(10, 15, 0, 0, 10)),
]


@pytest.mark.parametrize(("usage", "expected"), ANTHROPIC)
def test_anthropic_usage_maps_every_kind_once(usage, expected):
    assert messages_usage(usage) == expected
    translated = anthropic_usage_to_chat(usage)
    assert chat_usage(translated) == expected
    assert chat_usage_to_anthropic(translated) == {k: v for k, v in usage.items()} | {
        "cache_creation_input_tokens": expected.cache_write_tokens,
        "cache_read_input_tokens": expected.cached_input_tokens,
    } | (
        {"output_tokens_details": {"thinking_tokens": expected.reasoning_tokens}}
        if expected.reasoning_tokens
        else {}
    )


@pytest.mark.parametrize(("usage", "expected"), CHAT)
def test_chat_usage_maps_every_kind_once(usage, expected):
    assert chat_usage(usage) == expected
    assert messages_usage(chat_usage_to_anthropic(usage)) == expected
