"""An OpenAI chat call to a model routed to Anthropic: the request out, the answer back.

`chat_request_to_messages` builds the Anthropic messages body (system prompts lifted out,
consecutive same-role turns merged as Anthropic requires, tool calls and tool results as
`tool_use` / `tool_result` blocks, images as image blocks); `messages_response_to_chat` maps
the Message back to a chat completion with the usage moved kind by kind (`usage.py`).
"""

from __future__ import annotations

import json
from typing import Any

from metering.translate.errors import TranslationError
from metering.translate.usage import anthropic_usage_to_chat

# Anthropic requires max_tokens; a chat call may leave it out.
DEFAULT_MAX_TOKENS = 4096
# reasoning_effort as a thinking budget (Anthropic's minimum is 1,024).
EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def chat_request_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic messages body for an OpenAI chat body (model left as the client gave it)."""
    if _int(body.get("n"), 1) != 1:
        raise TranslationError("Only n=1 can be served by this model.", "n")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise TranslationError(
            "response_format is not available for this model.", "response_format"
        )
    system, turns = _split_system(body.get("messages") or [])
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    out: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": _int(limit, DEFAULT_MAX_TOKENS),
    }
    if system:
        out["system"] = system
    out["messages"] = _merge_turns([_turn(m) for m in turns])
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in EFFORT_BUDGETS and effort != "none":
        budget = EFFORT_BUDGETS[effort]
        if budget < out["max_tokens"]:
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _int(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _split_system(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise TranslationError("Each message must be an object.", "messages")
        if message.get("role") in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        else:
            turns.append(message)
    return "\n\n".join(s for s in system if s), turns


def _image(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError("An image_url part needs a url.", "messages")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";", 1)[0]
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image(part))
        else:
            raise TranslationError(
                f"Content part {kind!r} is not available for this model.", "messages"
            )
    return blocks


def _turn(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role == "user":
        return {"role": "user", "content": _blocks(message.get("content"))}
    if role == "assistant":
        blocks = _blocks(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": _arguments(function.get("arguments")),
                }
            )
        return {"role": "assistant", "content": blocks}
    if role == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": message.get("tool_call_id"),
            "content": _text_of(message.get("content")),
        }
        return {"role": "user", "content": [result]}
    raise TranslationError(f"Message role {role!r} is not available for this model.", "messages")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError) as exc:
        raise TranslationError("Tool call arguments must be a JSON object.", "messages") from exc
    if not isinstance(value, dict):
        raise TranslationError("Tool call arguments must be a JSON object.", "messages")
    return value


def _merge_turns(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic wants user and assistant turns to alternate: join neighbours of one role.

    Tool results go first in their user turn, as Anthropic requires."""
    merged: list[dict[str, Any]] = []
    for turn in turns:
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1]["content"].extend(turn["content"])
        else:
            merged.append({"role": turn["role"], "content": list(turn["content"])})
    for turn in merged:
        if turn["role"] == "user":
            content = turn["content"]
            content.sort(key=lambda block: block["type"] != "tool_result")
    return merged


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise TranslationError("Only function tools are available for this model.", "tools")
    function = tool.get("function") or {}
    out = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice in (None, "auto"):
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise TranslationError("tool_choice is not valid.", "tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def messages_response_to_chat(message: dict[str, Any], *, created: int) -> dict[str, Any]:
    """A chat completion for an Anthropic Message (non-streamed)."""
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append(_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    return {
        "id": "chatcmpl-" + str(message.get("id", "")),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": STOP_REASONS.get(message.get("stop_reason"), "stop"),
            }
        ],
        "usage": anthropic_usage_to_chat(message.get("usage") or {}),
    }


def _call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False, separators=(",", ":"))
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": arguments},
    }
