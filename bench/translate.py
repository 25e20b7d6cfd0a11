"""Translation cost per call: µs of CPU, request + response, streamed and not.

    .venv/bin/python bench/translate.py [--calls 20000] [--stream-tokens 200]

A typical agent turn (system prompt, a tool, a tool round-trip in the history, ~4 KB of
text) is translated both ways: OpenAI chat -> Anthropic request plus the Message back, and
Anthropic -> OpenAI chat request plus the completion back, and both to Gemini
(generateContent) with its answer back; for streams, a reply of --stream-tokens text deltas,
a tool call and the final usage through the stream translator.
Only process CPU time is counted (time.process_time), one core, no I/O.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from metering.translate.anthropic_to_openai import (
    chat_response_to_messages,
    messages_request_to_chat,
)
from metering.translate.gemini import (
    GeminiToChat,
    GeminiToMessages,
    chat_request_to_gemini,
    gemini_response_to_chat,
    gemini_response_to_messages,
    messages_request_to_gemini,
)
from metering.translate.openai_to_anthropic import (
    chat_request_to_messages,
    messages_response_to_chat,
)
from metering.translate.streams import ChatToMessages, MessagesToChat

TEXT = "Refactor the function so it reads the file once and returns the parsed rows. " * 25
TOOL = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
CHAT_REQUEST = {
    "model": "m",
    "max_completion_tokens": 2000,
    "tools": [
        {
            "type": "function",
            "function": {"name": "read", "description": "Read", "parameters": TOOL},
        }
    ],
    "messages": [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": TEXT},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path":"a.py"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": TEXT},
    ],
}
MESSAGES_REQUEST = {
    "model": "m",
    "max_tokens": 2000,
    "system": "You are a coding agent.",
    "tools": [{"name": "read", "description": "Read", "input_schema": TOOL}],
    "messages": [
        {"role": "user", "content": TEXT},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a.py"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": TEXT}],
        },
    ],
}
MESSAGE = {
    "id": "msg_1",
    "model": "m",
    "content": [{"type": "text", "text": TEXT[:400]}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 900, "cache_read_input_tokens": 100, "output_tokens": 80},
}
COMPLETION = {
    "id": "c",
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": TEXT[:400]},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 80, "total_tokens": 1080},
}


GEMINI_ANSWER = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": TEXT[:400]}]}, "finishReason": "STOP"}
    ],
    "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 100,
                      "candidatesTokenCount": 80},
    "responseId": "r",
}  # fmt: skip


def _gemini_chunks(tokens: int) -> list[dict]:
    def chunk(part: dict, visible: int, finish: str | None = None) -> dict:
        candidate: dict = {"content": {"role": "model", "parts": [part]}}
        if finish:
            candidate["finishReason"] = finish
        metadata = {"promptTokenCount": 900, "candidatesTokenCount": visible}
        return {"candidates": [candidate], "usageMetadata": metadata, "responseId": "r"}

    chunks = [chunk({"text": " word"}, i + 1) for i in range(tokens)]
    call = {"functionCall": {"name": "read", "args": {"path": "a.py"}}}
    chunks.append(chunk(call, tokens + 10, "STOP"))
    return chunks


def _anthropic_events(tokens: int) -> list[dict]:
    events = [
        {
            "type": "message_start",
            "message": {"id": "msg_1", "usage": {"input_tokens": 900, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": " word"},
        }
    ] * tokens
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "read", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"path":"a.py"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": tokens + 10},
        },
        {"type": "message_stop"},
    ]
    return events


def _chat_chunks(tokens: int) -> list[dict]:
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": " word"})] * tokens
    call = {
        "index": 0,
        "id": "t",
        "type": "function",
        "function": {"name": "read", "arguments": '{"path":"a.py"}'},
    }
    chunks += [chunk({"tool_calls": [call]}), chunk({}, "tool_calls")]
    chunks.append(
        {
            "id": "c",
            "choices": [],
            "usage": {"prompt_tokens": 900, "completion_tokens": tokens + 10},
        }
    )
    return chunks


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--stream-tokens", type=int, default=200)
    args = parser.parse_args()
    events = _anthropic_events(args.stream_tokens)
    chunks = _chat_chunks(args.stream_tokens)

    def chat_via_anthropic() -> None:
        chat_request_to_messages(CHAT_REQUEST)
        messages_response_to_chat(MESSAGE, created=0)

    def messages_via_openai() -> None:
        messages_request_to_chat(MESSAGES_REQUEST)
        chat_response_to_messages(COMPLETION)

    def chat_stream_via_anthropic() -> None:
        chat_request_to_messages(CHAT_REQUEST)
        translator = MessagesToChat(model="m", created=0, include_usage=True)
        for event in events:
            translator.feed(event)

    def messages_stream_via_openai() -> None:
        messages_request_to_chat(MESSAGES_REQUEST)
        translator = ChatToMessages(model="m")
        for chunk in chunks:
            translator.feed(chunk)
        translator.done()

    gemini_chunks = _gemini_chunks(args.stream_tokens)

    def chat_via_gemini() -> None:
        chat_request_to_gemini(CHAT_REQUEST)
        gemini_response_to_chat(GEMINI_ANSWER, model="m", created=0)

    def messages_via_gemini() -> None:
        messages_request_to_gemini(MESSAGES_REQUEST)
        gemini_response_to_messages(GEMINI_ANSWER, model="m")

    def chat_stream_via_gemini() -> None:
        chat_request_to_gemini(CHAT_REQUEST)
        translator = GeminiToChat(model="m", created=0, include_usage=True)
        for chunk in gemini_chunks:
            translator.feed(chunk)

    def messages_stream_via_gemini() -> None:
        messages_request_to_gemini(MESSAGES_REQUEST)
        translator = GeminiToMessages(model="m")
        for chunk in gemini_chunks:
            translator.feed(chunk)

    stream_calls = max(1, args.calls // 20)
    rows = [
        ("chat -> anthropic, not streamed", _per_call_us(chat_via_anthropic, args.calls)),
        ("messages -> openai, not streamed", _per_call_us(messages_via_openai, args.calls)),
        (
            f"chat -> anthropic, stream of {args.stream_tokens} deltas",
            _per_call_us(chat_stream_via_anthropic, stream_calls),
        ),
        (
            f"messages -> openai, stream of {args.stream_tokens} deltas",
            _per_call_us(messages_stream_via_openai, stream_calls),
        ),
        ("chat -> gemini, not streamed", _per_call_us(chat_via_gemini, args.calls)),
        ("messages -> gemini, not streamed", _per_call_us(messages_via_gemini, args.calls)),
        (
            f"chat -> gemini, stream of {args.stream_tokens} deltas",
            _per_call_us(chat_stream_via_gemini, stream_calls),
        ),
        (
            f"messages -> gemini, stream of {args.stream_tokens} deltas",
            _per_call_us(messages_stream_via_gemini, stream_calls),
        ),
    ]
    for name, us in rows:
        print(f"{name:<44} {us:9.1f} µs CPU per call")


if __name__ == "__main__":
    main()
