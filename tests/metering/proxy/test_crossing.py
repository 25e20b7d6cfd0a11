"""Cross-protocol pieces, table by table (pure)."""

from __future__ import annotations

import json

import pytest

from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import crossing
from metering.proxy.errors import ProxyError
from metering.translate.streams import ChatToMessages, MessagesToChat


@pytest.mark.parametrize(
    ("endpoint", "kind", "sent"),
    [
        ("chat", "openai", ""),
        ("messages", "anthropic", ""),
        ("chat", "anthropic", "messages"),
        ("messages", "openai", "chat"),
        ("messages", "openai_compatible", "chat"),
        ("messages", "azure_openai", "chat"),
        ("responses", "openai", ""),
        ("responses", "anthropic", None),
        ("embeddings", "anthropic", None),
    ],
)
def test_upstream_endpoint(endpoint: str, kind: str, sent: str | None) -> None:
    if sent is None:
        with pytest.raises(ProxyError) as caught:
            crossing.upstream_endpoint(endpoint, kind)
        assert caught.value.code == "wrong_endpoint"
        return
    assert crossing.upstream_endpoint(endpoint, kind) == sent


@pytest.mark.parametrize(
    ("client", "status", "upstream", "wire_type"),
    [
        (OPENAI, 400, b'{"type":"error","error":{"type":"x","message":"bad thing"}}', None),
        (ANTHROPIC, 429, b'{"error":{"message":"bad thing","type":"rate_limit_error"}}', None),
        (ANTHROPIC, 503, b"<html>oops</html>", None),
    ],
)
def test_an_upstream_error_in_the_clients_shape(client, status, upstream, wire_type) -> None:
    body = json.loads(crossing.error_answer(client, status, upstream))
    if client is ANTHROPIC:
        assert body["type"] == "error"
        expected = {429: "rate_limit_error", 503: "api_error"}[status]
        assert body["error"]["type"] == expected
    else:
        assert body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert message == ("bad thing" if b"bad thing" in upstream else crossing.UPSTREAM_REFUSED)


def test_a_chat_stream_split_anywhere_becomes_anthropic_events() -> None:
    upstream = (
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}\n\n'
        b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    meter = crossing.stream_meter("messages", "chat", "gpt-x", include_usage=False)
    assert isinstance(meter.translator, ChatToMessages)
    out = b"".join(meter.feed(upstream[i : i + 7]) for i in range(0, len(upstream), 7))
    out += meter.close()
    kinds = [line[7:] for line in out.decode().splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert meter.state.usage is not None
    assert (meter.state.usage.input_tokens, meter.state.usage.output_tokens) == (7, 2)
    assert meter.state.finished


def test_an_anthropic_stream_becomes_chat_chunks_with_the_usage_asked() -> None:
    events = [
        {
            "type": "message_start",
            "message": {"id": "m1", "usage": {"input_tokens": 5, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3},
        },
        {"type": "message_stop"},
    ]
    upstream = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
        for e in events
    )
    meter = crossing.stream_meter("chat", "messages", "claude-x", include_usage=True)
    assert isinstance(meter.translator, MessagesToChat)
    out = meter.feed(upstream).decode()
    frames = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    usage = json.loads(frames[-2])["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 3)
    assert (meter.state.usage.input_tokens, meter.state.usage.output_tokens) == (5, 3)
