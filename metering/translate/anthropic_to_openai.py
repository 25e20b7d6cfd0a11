"""An Anthropic messages call to a model routed to an OpenAI-kind upstream, and back.

`messages_request_to_chat` builds the chat body (system first, tool results as `tool`
messages ahead of the rest of their user turn, `tool_use` blocks as `tool_calls`, images as
data or plain URLs; streams ask for the usage chunk so the final usage is exact);
`chat_response_to_messages` maps the completion back to a Message. Thinking blocks in the
history are dropped: an OpenAI upstream neither accepts nor needs them.
"""

from __future__ import annotations

import json
from typing import Any

from metering.translate.errors import TranslationError
from metering.translate.usage import chat_usage_to_anthropic

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def messages_request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body for an Anthropic messages body (model left as the client gave it)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for turn in body.get("messages") or []:
        if not isinstance(turn, dict):
            raise TranslationError("Each message must be an object.", "messages")
        messages.extend(_turn(turn))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out["max_completion_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            out.update(_tool_choice(choice))
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url")
    else:
        raise TranslationError("This image source is not available for this model.", "messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _turn(turn: dict[str, Any]) -> list[dict[str, Any]]:
    role = turn.get("role")
    content = turn.get("content")
    if role not in ("user", "assistant"):
        raise TranslationError(f"Message role {role!r} is not valid.", "messages")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and role == "user":
            parts.append(_image(block))
        elif kind == "tool_result" and role == "user":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": _text_of(block.get("content")),
                }
            )
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(
                block.get("input") or {}, ensure_ascii=False, separators=(",", ":")
            )
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise TranslationError(
                f"Content block {kind!r} is not available for this model.", "messages"
            )
    if role == "assistant":
        message: dict[str, Any] = {"role": "assistant", "content": _joined(parts)}
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": _joined(parts) if only_text else parts})
    return out


def _joined(parts: list[dict[str, Any]]) -> str | None:
    if not parts:
        return None
    return "".join(p["text"] for p in parts)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if (
        not isinstance(tool, dict)
        or "input_schema" not in tool
        or tool.get("type") not in (None, "custom")
    ):
        raise TranslationError(
            "Only client tools with an input_schema are available for this model.", "tools"
        )
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool":
        out = {"tool_choice": {"type": "function", "function": {"name": choice.get("name")}}}
    else:
        raise TranslationError("tool_choice is not valid.", "tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def chat_response_to_messages(completion: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Message for a chat completion (non-streamed, first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append(tool_use_block(call))
    return {
        "id": "msg_" + str(completion.get("id", "")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": chat_usage_to_anthropic(completion.get("usage") or {}),
    }


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        # A model's malformed arguments are passed on, not lost: the client sees what it said.
        arguments = {"arguments": raw}
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": arguments,
    }
