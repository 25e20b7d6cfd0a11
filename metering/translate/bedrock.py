"""OpenAI chat <-> AWS Bedrock Converse (pure): the request, the whole answer and the stream.

Converse takes the model and the streaming in the URL, the system prompt apart (`system`),
content as typed blocks (`text`, `toolUse`, `toolResult`), settings in `inferenceConfig`, tools
in `toolConfig`. Its `usage.inputTokens` leaves out the cache reads and writes; the chat usage
made here puts them back in `prompt_tokens`, as OpenAI counts.
"""

from __future__ import annotations

import json
from typing import Any

from metering.translate.errors import TranslationError

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"
_SETTINGS = {"temperature": "temperature", "top_p": "topP"}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise TranslationError(
                "Tool call arguments must be a JSON object.", "messages"
            ) from None
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": call.get("id"),
                    "name": function.get("name"),
                    "input": arguments,
                }
            }
        )
    return blocks


def _add(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Converse wants the roles to alternate: consecutive turns of one role are merged."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def chat_request_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse body for an OpenAI chat body (model and `stream` go in the URL)."""
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("Only n=1 can be served by this model.", "n")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            raise TranslationError("Each message must be an object.", "messages")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "tool":
            result = {
                "toolUseId": message.get("tool_call_id"),
                "content": [{"text": _text_of(message.get("content"))}],
            }
            _add(messages, "user", [{"toolResult": result}])
        elif role in ("user", "assistant"):
            _add(messages, role, _blocks(message))
        else:
            raise TranslationError(f"Unknown message role {role!r}.", "messages")
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        config["maxTokens"] = limit
    for name, field in _SETTINGS.items():
        if body.get(name) is not None:
            config[field] = body[name]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    tools = body.get("tools")
    if tools:
        specs = []
        for tool in tools:
            function = (tool or {}).get("function") or {}
            spec: dict[str, Any] = {
                "name": function.get("name"),
                "inputSchema": {"json": function.get("parameters") or {"type": "object"}},
            }
            if function.get("description"):
                spec["description"] = function["description"]
            specs.append({"toolSpec": spec})
        tool_config: dict[str, Any] = {"tools": specs}
        choice = body.get("tool_choice")
        if choice == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            tool_config["toolChoice"] = {"tool": {"name": choice["function"].get("name")}}
        if choice != "none":
            out["toolConfig"] = tool_config
    return out


def converse_usage_to_chat(usage: dict[str, Any]) -> dict[str, Any]:
    """A Converse `usage` as an OpenAI chat `usage` (cache reads and writes in the prompt)."""

    def n(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    read, written = n("cacheReadInputTokens"), n("cacheWriteInputTokens")
    prompt = n("inputTokens") + read + written
    output = n("outputTokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
    }


def _finish(reason: Any) -> str:
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def converse_response_to_chat(
    data: dict[str, Any], *, model: str, created: int, response_id: str = ""
) -> dict[str, Any]:
    """A chat completion for a whole Converse answer."""
    message = (data.get("output") or {}).get("message") or {}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append(
                {
                    "id": use.get("toolUseId") or f"call_{len(calls)}",
                    "type": "function",
                    "function": {
                        "name": use.get("name"),
                        "arguments": _DUMP(use.get("input") or {}),
                    },
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    return {
        "id": "chatcmpl-" + response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _finish(data.get("stopReason")),
            }
        ],
        "usage": converse_usage_to_chat(data.get("usage") or {}),
    }


class ConverseToChat:
    """ConverseStream events (type, body) as OpenAI chat SSE frames; the finish chunk waits
    for `metadata` (which carries the usage), then `[DONE]`."""

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.calls: dict[int, int] = {}  # content block index -> tool call index
        self.reason: str | None = None
        self.closed = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, event: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        if self.closed:
            return []
        if event == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if event == "contentBlockStart":
            use = (body.get("start") or {}).get("toolUse")
            if not isinstance(use, dict):
                return []
            index = self.calls.setdefault(int(body.get("contentBlockIndex") or 0), len(self.calls))
            call = {
                "index": index,
                "id": use.get("toolUseId"),
                "type": "function",
                "function": {"name": use.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if event == "contentBlockDelta":
            delta = body.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                return [self._chunk({"content": delta["text"]})]
            use = delta.get("toolUse")
            if isinstance(use, dict) and isinstance(use.get("input"), str):
                index = self.calls.get(int(body.get("contentBlockIndex") or 0), 0)
                call = {"index": index, "function": {"arguments": use["input"]}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if event == "messageStop":
            self.reason = _finish(body.get("stopReason"))
            return []
        if event == "metadata":
            self.closed = True
            out = [self._chunk({}, self.reason or "stop")]
            if self.include_usage:
                final = self._chunk({})
                final["choices"] = []
                final["usage"] = converse_usage_to_chat(body.get("usage") or {})
                out.append(final)
            return out
        return []

    def error(self, name: str) -> list[bytes]:
        self.closed = True
        return [b"data: " + _DUMP({"error": {"message": name}}).encode() + b"\n\n"]

    def feed(self, event: str, body: dict[str, Any]) -> list[bytes]:
        frames = [b"data: " + _DUMP(c).encode() + b"\n\n" for c in self.chunks(event, body)]
        if self.closed and frames:
            frames.append(DONE)
        return frames
