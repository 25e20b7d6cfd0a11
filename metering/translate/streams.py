"""Stream translators: one decoded upstream event in, the client's SSE frames (bytes) out.

No I/O and no buffering beyond what a frame needs: each translator holds a few counters and
the open content block, so a stream is translated as it arrives. The meter still reads the
upstream's own events; these frames are only what the client sees, with the final usage
mapped kind by kind (`usage.py`).

- `MessagesToChat`: Anthropic message_* / content_block_* events -> OpenAI chat chunks,
  `data: [DONE]` after message_stop (the usage chunk before it when the client asked for it).
- `ChatToMessages`: OpenAI chat chunks -> message_start, content_block_start/delta/stop,
  message_delta (stop reason and the final usage) and message_stop. The chat upstream is
  asked for the usage chunk, which comes after the finish chunk, so the closing events are
  sent at `[DONE]`: `done()`, also to call when a stream ends without it.
"""

from __future__ import annotations

import json
from typing import Any

from metering.translate.anthropic_to_openai import STOP_REASONS as CHAT_TO_MESSAGES_STOP
from metering.translate.openai_to_anthropic import STOP_REASONS as MESSAGES_TO_CHAT_STOP
from metering.translate.usage import anthropic_usage_to_chat, chat_usage_to_anthropic

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + _DUMP(payload).encode() + b"\n\n"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return (
        b"event: "
        + kind.encode()
        + b"\ndata: "
        + _DUMP({"type": kind, **payload}).encode()
        + b"\n\n"
    )


class MessagesToChat:
    """An Anthropic messages stream as an OpenAI chat completion stream."""

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.tool_index = -1
        self.block_is_tool: dict[int, int] = {}  # content block index -> tool call index
        self.closed = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return _data(chunk)

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = "chatcmpl-" + str(message.get("id", ""))
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "tool_use":
                return []
            self.tool_index += 1
            self.block_is_tool[event.get("index", 0)] = self.tool_index
            call = {
                "index": self.tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            # message_delta counts are cumulative: present fields replace message_start's.
            self.usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            return []
        if kind == "message_stop":
            return self._close()
        if kind == "error":
            error = event.get("error") or {}
            self.closed = True
            body = {
                "message": error.get("message", ""),
                "type": error.get("type"),
                "param": None,
                "code": None,
            }
            return [_data({"error": body})]
        return []  # ping, content_block_stop, unknown events

    def _delta(self, event: dict[str, Any]) -> list[bytes]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "input_json_delta":
            index = self.block_is_tool.get(event.get("index", 0), self.tool_index)
            call = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # signature_delta and the like have no chat counterpart

    def _close(self) -> list[bytes]:
        if self.closed:
            return []
        self.closed = True
        frames = [self._chunk({}, MESSAGES_TO_CHAT_STOP.get(self.stop_reason or "", "stop"))]
        if self.include_usage:
            frames.append(
                _data(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": anthropic_usage_to_chat(self.usage),
                    }
                )
            )
        frames.append(DONE)
        return frames


class ChatToMessages:
    """An OpenAI chat completion stream (first choice) as an Anthropic messages stream."""

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.started = False
        self.index = -1  # the current content block
        self.open: str | None = None  # "text" or "tool_use"
        self.tool_blocks: dict[int, int] = {}  # tool call index -> content block index
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.closed = False

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self.closed:
            return []
        if "error" in chunk and "choices" not in chunk:
            self.closed = True
            error = chunk.get("error") or {}
            return [
                _event(
                    "error", {"error": {"type": "api_error", "message": error.get("message", "")}}
                )
            ]
        frames: list[bytes] = []
        if not self.started:
            self.started = True
            frames.append(self._start(chunk))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                frames.extend(self._text(delta["content"]))
            for call in delta.get("tool_calls") or []:
                frames.extend(self._tool(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                frames.extend(self._stop_block())
        return frames

    def _start(self, chunk: dict[str, Any]) -> bytes:
        message = {
            "id": "msg_" + str(chunk.get("id", "")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The chat upstream says its usage only at the end; message_delta carries it all.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _stop_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", {"index": self.index})]

    def _text(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self.open != "text":
            frames.extend(self._stop_block())
            self.index += 1
            self.open = "text"
            block = {"type": "text", "text": ""}
            frames.append(
                _event("content_block_start", {"index": self.index, "content_block": block})
            )
        delta = {"type": "text_delta", "text": text}
        frames.append(_event("content_block_delta", {"index": self.index, "delta": delta}))
        return frames

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tool_blocks:
            frames.extend(self._stop_block())
            self.index += 1
            self.open = "tool_use"
            self.tool_blocks[position] = self.index
            block = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            frames.append(
                _event("content_block_start", {"index": self.index, "content_block": block})
            )
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            block_index = self.tool_blocks[position]
            frames.append(_event("content_block_delta", {"index": block_index, "delta": delta}))
        return frames

    def done(self) -> list[bytes]:
        """The upstream's `data: [DONE]`: close the message with its stop reason and usage."""
        if self.closed:
            return []
        self.closed = True
        frames = [] if self.started else [self._start({})]
        frames.extend(self._stop_block())
        stop = CHAT_TO_MESSAGES_STOP.get(self.finish or "", "end_turn")
        delta = {"stop_reason": stop, "stop_sequence": None}
        frames.append(
            _event("message_delta", {"delta": delta, "usage": chat_usage_to_anthropic(self.usage)})
        )
        frames.append(_event("message_stop", {}))
        return frames
