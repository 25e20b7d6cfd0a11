import json

import pytest

from metering.providers.anthropic import messages_usage
from metering.providers.openai import chat_usage
from metering.translate.streams import DONE, ChatToMessages, MessagesToChat

ANTHROPIC_EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "claude-x",
            "usage": {
                "input_tokens": 12,
                "cache_read_input_tokens": 80,
                "cache_creation_input_tokens": 8,
                "output_tokens": 1,
            },
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    },
    {"type": "ping"},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Hmm"},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "s"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " check."}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 42, "output_tokens_details": {"thinking_tokens": 9}},
    },
    {"type": "message_stop"},
]
UPSTREAM_USAGE = {
    "input_tokens": 12,
    "cache_read_input_tokens": 80,
    "cache_creation_input_tokens": 8,
    "output_tokens": 42,
    "output_tokens_details": {"thinking_tokens": 9},
}


def _data(frames):
    out = []
    for frame in frames:
        assert frame.endswith(b"\n\n")
        if frame == DONE:
            out.append("[DONE]")
            continue
        lines = frame.decode().strip().split("\n")
        out.append(json.loads(lines[-1].removeprefix("data: ")))
    return out


@pytest.mark.parametrize("include_usage", [True, False])
def test_messages_stream_to_chat(include_usage):
    translator = MessagesToChat(model="claude-x", created=7, include_usage=include_usage)
    frames = [f for event in ANTHROPIC_EVENTS for f in translator.feed(event)]
    chunks = _data(frames)
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Hmm"},
        {"content": "Let me"},
        {"content": " check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        {},
    ]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]]
    assert finishes == [None] * 7 + ["tool_calls"]
    assert all(c["id"] == "chatcmpl-msg_1" for c in chunks[:-1])
    usage_chunks = [c for c in chunks[:-1] if not c["choices"]]
    if include_usage:
        assert len(usage_chunks) == 1
        assert chat_usage(usage_chunks[0]["usage"]) == messages_usage(UPSTREAM_USAGE)
        assert all(c["usage"] is None for c in chunks[:-2])
    else:
        assert usage_chunks == []
        assert all("usage" not in c for c in chunks[:-1])


def test_messages_stream_error_is_a_chat_error_chunk():
    translator = MessagesToChat(model="m", created=0, include_usage=True)
    translator.feed(ANTHROPIC_EVENTS[0])
    frames = translator.feed(
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    assert _data(frames) == [
        {"error": {"message": "busy", "type": "overloaded_error", "param": None, "code": None}}
    ]
    assert translator.feed({"type": "message_stop"}) == []


def _chunk(delta=None, finish=None, usage=None, choices=True):
    chunk = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-x"}
    chunk["choices"] = (
        [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []
    )
    if usage is not None:
        chunk["usage"] = usage
    return chunk


CHAT_USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 40,
    "total_tokens": 140,
    "prompt_tokens_details": {"cached_tokens": 64},
    "completion_tokens_details": {"reasoning_tokens": 30},
}
CHAT_CHUNKS = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me"}),
    _chunk({"content": " check."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "time", "arguments": "{}"},
                }
            ]
        }
    ),
    _chunk({}, "tool_calls"),
    _chunk(usage=CHAT_USAGE, choices=False),
]


def test_chat_stream_to_messages():
    translator = ChatToMessages(model="gpt-x")
    frames = [f for chunk in CHAT_CHUNKS for f in translator.feed(chunk)] + translator.done()
    kinds = [f.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for f in frames]
    events = _data(frames)
    assert [e["type"] for e in events] == kinds
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert events[2]["delta"] == {"type": "text_delta", "text": "Let me"}
    assert events[5] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}},
    }
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert events[8]["index"] == 2 and events[8]["content_block"]["name"] == "time"
    assert events[11]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert messages_usage(events[11]["usage"]) == chat_usage(CHAT_USAGE)
    assert translator.done() == []


def test_chat_stream_cut_before_any_chunk_still_closes_the_message():
    translator = ChatToMessages(model="gpt-x")
    events = _data(translator.done())
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1]["delta"]["stop_reason"] == "end_turn"


def test_chat_stream_error_chunk():
    translator = ChatToMessages(model="gpt-x")
    translator.feed(CHAT_CHUNKS[0])
    frames = translator.feed({"error": {"message": "boom", "type": "server_error"}})
    assert _data(frames) == [{"type": "error", "error": {"type": "api_error", "message": "boom"}}]
    assert translator.done() == []
