import pytest

from metering.translate import TranslationError
from metering.translate.anthropic_to_openai import (
    chat_response_to_messages,
    messages_request_to_chat,
)
from metering.translate.openai_to_anthropic import (
    chat_request_to_messages,
    messages_response_to_chat,
)

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
PNG = "iVBORw0KGgo="

CHAT_TO_MESSAGES = [
    (
        "system prompts lifted, default max_tokens",
        {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": "Hi"},
            ],
        },
        {
            "model": "claude-x",
            "max_tokens": 4096,
            "system": "Be brief.\n\nUse metric.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        },
    ),
    (
        "tools, tool call, tool results merged into one user turn first",
        {
            "model": "claude-x",
            "max_completion_tokens": 300,
            "stream": True,
            "stop": "END",
            "temperature": 0,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather now",
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [
                {"role": "user", "content": "Weather in Oslo and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "-3C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "18C"},
                {"role": "user", "content": "Thanks"},
            ],
        },
        {
            "model": "claude-x",
            "max_tokens": 300,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Weather in Oslo and Rome?"}],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "call_1",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                        {
                            "type": "tool_use",
                            "id": "call_2",
                            "name": "weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "-3C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "18C"},
                        {"type": "text", "text": "Thanks"},
                    ],
                },
            ],
            "temperature": 0,
            "stream": True,
            "stop_sequences": ["END"],
            "tools": [
                {"name": "weather", "input_schema": WEATHER_SCHEMA, "description": "Weather now"}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        },
    ),
    (
        "images: data URL and plain URL; reasoning effort as a thinking budget",
        {
            "model": "claude-x",
            "max_tokens": 8000,
            "reasoning_effort": "high",
            "user": "u-7",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.test/a.jpg"}},
                    ],
                }
            ],
        },
        {
            "model": "claude-x",
            "max_tokens": 8000,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.test/a.jpg"},
                        },
                    ],
                }
            ],
            "thinking": {"type": "enabled", "budget_tokens": 4096},
            "metadata": {"user_id": "u-7"},
        },
    ),
]


@pytest.mark.parametrize(
    ("name", "chat", "expected"), CHAT_TO_MESSAGES, ids=[c[0] for c in CHAT_TO_MESSAGES]
)
def test_chat_request_to_messages(name, chat, expected):
    assert chat_request_to_messages(chat) == expected


MESSAGES_TO_CHAT = [
    (
        "system blocks, stream asks for usage",
        {
            "model": "gpt-x",
            "max_tokens": 1024,
            "stream": True,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": "Hi"}],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-7"},
        },
        {
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "max_completion_tokens": 1024,
            "stop": ["END"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-7",
        },
    ),
    (
        "tool use and results, thinking dropped, image",
        {
            "model": "gpt-x",
            "max_tokens": 500,
            "tools": [
                {"name": "weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}
            ],
            "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather here?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "-3C"}],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
        },
        {
            "model": "gpt-x",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"},
                {"role": "user", "content": "And tomorrow?"},
            ],
            "max_completion_tokens": 500,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "parameters": WEATHER_SCHEMA,
                        "description": "Weather now",
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": False,
        },
    ),
]


@pytest.mark.parametrize(
    ("name", "messages", "expected"), MESSAGES_TO_CHAT, ids=[c[0] for c in MESSAGES_TO_CHAT]
)
def test_messages_request_to_chat(name, messages, expected):
    assert messages_request_to_chat(messages) == expected


@pytest.mark.parametrize(
    ("translate", "body", "param"),
    [
        (chat_request_to_messages, {"n": 2, "messages": []}, "n"),
        (
            chat_request_to_messages,
            {"response_format": {"type": "json_schema"}, "messages": []},
            "response_format",
        ),
        (
            chat_request_to_messages,
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages",
        ),
        (
            chat_request_to_messages,
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "[1"}}]}
                ]
            },
            "messages",
        ),
        (chat_request_to_messages, {"tools": [{"type": "web_search"}], "messages": []}, "tools"),
        (
            messages_request_to_chat,
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []},
            "tools",
        ),
        (
            messages_request_to_chat,
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages",
        ),
        (messages_request_to_chat, {"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ],
)
def test_untranslatable_requests_are_refused_with_the_param(translate, body, param):
    with pytest.raises(TranslationError) as caught:
        translate(body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_messages_response_to_chat(stop, finish):
    message = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": stop,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 30},
    }
    assert messages_response_to_chat(message, created=1) == {
        "id": "chatcmpl-msg_1",
        "object": "chat.completion",
        "created": 1,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "Let me see.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": 15,
            "completion_tokens": 30,
            "total_tokens": 45,
            "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_chat_response_to_messages(finish, stop):
    completion = {
        "id": "chatcmpl-1",
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": "not json"},
                        },
                    ],
                },
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "total_tokens": 140,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 30},
        },
    }
    assert chat_response_to_messages(completion) == {
        "id": "msg_chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-x",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "weather",
                "input": {"arguments": "not json"},
            },
        ],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 36,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 64,
            "output_tokens": 40,
            "output_tokens_details": {"thinking_tokens": 30},
        },
    }
