"""OpenAI chat (and, through it, Anthropic messages) calls to a model routed to Gemini: the
request out, the answer back, whole and streamed (pure: no I/O).

`chat_request_to_gemini` builds the generateContent body (system prompts as
`systemInstruction`, assistant turns as `model` turns, tool calls as `functionCall` parts, tool
results as `functionResponse` parts named after the call they answer, images as `inlineData`,
the sampling settings in `generationConfig`). `gemini_response_to_chat` maps the answer back,
with the usage moved kind by kind (`gemini_usage_to_chat`: its normalised usage is the
upstream's). An Anthropic messages call goes through chat both ways
(`anthropic_to_openai`), so the two protocols share one mapping.

`GeminiToChat` and `GeminiToMessages` translate a stream, one decoded upstream chunk in, the
client's SSE frames out; a Gemini stream has no end marker of its own, so the closing frames
go out with the chunk that carries the `finishReason` (and the final usage).
"""

from __future__ import annotations

import json
from typing import Any

from metering.translate.anthropic_to_openai import (
    chat_response_to_messages,
    messages_request_to_chat,
)
from metering.translate.errors import TranslationError
from metering.translate.streams import DONE, ChatToMessages

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# reasoning_effort as a thinking budget ("none" turns thinking off where the model allows it).
EFFORT_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_SETTINGS = {
    "temperature": "temperature",
    "top_p": "topP",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


# --- requests ------------------------------------------------------------------------------


def messages_request_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent body for an Anthropic messages body (through chat)."""
    return chat_request_to_gemini(messages_request_to_chat(body))


def chat_request_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent body for an OpenAI chat body. The model and `stream` are left out:
    Gemini takes them in the URL."""
    if _int(body.get("n"), 1) != 1:
        raise TranslationError("Only n=1 can be served by this model.", "n")
    messages = body.get("messages") or []
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (functionResponse names it)
    for message in messages:
        if not isinstance(message, dict):
            raise TranslationError("Each message must be an object.", "messages")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append(text)
            continue
        _add(contents, _content(message, names))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if _int(limit, 0) > 0:
        config["maxOutputTokens"] = limit
    for name, field in _SETTINGS.items():
        if body.get(name) is not None:
            config[field] = body[name]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in EFFORT_BUDGETS:
        config["thinkingConfig"] = {"thinkingBudget": EFFORT_BUDGETS[effort]}
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": [_tool(t) for t in tools]}]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["toolConfig"] = {"functionCallingConfig": choice}
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


def _add(contents: list[dict[str, Any]], content: dict[str, Any]) -> None:
    """Neighbouring turns of one role are one turn (tool results answer one model turn)."""
    if not content["parts"]:
        return
    if contents and contents[-1]["role"] == content["role"]:
        contents[-1]["parts"].extend(content["parts"])
    else:
        contents.append(content)


def _image(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise TranslationError(
            "Images for this model must be sent inline (a data: URL).", "messages"
        )
    head, _, data = url.partition(",")
    return {"inlineData": {"mimeType": head[5:].split(";", 1)[0], "data": data}}


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image(part))
        else:
            raise TranslationError(
                f"Content part {kind!r} is not available for this model.", "messages"
            )
    return parts


def _content(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    role = message.get("role")
    if role == "user":
        return {"role": "user", "parts": _parts(message.get("content"))}
    if role == "assistant":
        parts = _parts(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            name = str(function.get("name") or "")
            names[str(call.get("id"))] = name
            parts.append({"functionCall": {"name": name, "args": _arguments(function)}})
        return {"role": "model", "parts": parts}
    if role == "tool":
        call_id = str(message.get("tool_call_id"))
        if call_id not in names:
            raise TranslationError(
                "A tool message must answer a tool call of an earlier assistant message.",
                "messages",
            )
        result = {"name": names[call_id], "response": {"result": _text_of(message["content"])}}
        return {"role": "user", "parts": [{"functionResponse": result}]}
    raise TranslationError(f"Message role {role!r} is not available for this model.", "messages")


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    raw = function.get("arguments")
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError) as exc:
        raise TranslationError("Tool call arguments must be a JSON object.", "messages") from exc
    if not isinstance(value, dict):
        raise TranslationError("Tool call arguments must be a JSON object.", "messages")
    return value


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise TranslationError("Only function tools are available for this model.", "tools")
    function = tool.get("function") or {}
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "required":
        return {"mode": "ANY"}
    if choice == "none":
        return {"mode": "NONE"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise TranslationError("tool_choice is not valid.", "tool_choice")


# --- answers -------------------------------------------------------------------------------


def _n(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def gemini_usage_to_chat(metadata: dict[str, Any]) -> dict[str, Any]:
    """A Gemini `usageMetadata` as an OpenAI chat `usage` (thoughts inside the output)."""
    prompt = _n(metadata.get("promptTokenCount")) + _n(metadata.get("toolUsePromptTokenCount"))
    thoughts = _n(metadata.get("thoughtsTokenCount"))
    output = _n(metadata.get("candidatesTokenCount")) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {
            "cached_tokens": min(prompt, _n(metadata.get("cachedContentTokenCount")))
        },
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _call_id(response_id: str, index: int, call: dict[str, Any]) -> str:
    given = call.get("id")
    return given if isinstance(given, str) and given else f"call_{response_id}_{index}"


def _candidate(data: dict[str, Any]) -> dict[str, Any]:
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return {}


def _finish(reason: Any, calls: bool) -> str:
    if calls and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def gemini_response_to_chat(data: dict[str, Any], *, model: str, created: int) -> dict[str, Any]:
    """A chat completion for a whole GenerateContentResponse (its first candidate)."""
    response_id = str(data.get("responseId") or "")
    candidate = _candidate(data)
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    parts = (candidate.get("content") or {}).get("parts") or []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            calls.append(
                {
                    "id": _call_id(response_id, len(calls), call),
                    "type": "function",
                    "function": {
                        "name": call.get("name"),
                        "arguments": _DUMP(call.get("args") or {}),
                    },
                }
            )
        elif isinstance(part.get("text"), str):
            (thinking if part.get("thought") else text).append(part["text"])
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    return {
        "id": "chatcmpl-" + response_id,
        "object": "chat.completion",
        "created": created,
        "model": data.get("modelVersion") or model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _finish(candidate.get("finishReason"), bool(calls)),
            }
        ],
        "usage": gemini_usage_to_chat(data.get("usageMetadata") or {}),
    }


def gemini_response_to_messages(data: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic Message for a whole GenerateContentResponse (through chat)."""
    return chat_response_to_messages(gemini_response_to_chat(data, model=model, created=0))


# --- streams -------------------------------------------------------------------------------


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + _DUMP(payload).encode() + b"\n\n"


class GeminiToChat:
    """A Gemini stream as OpenAI chat chunks: `chunks` gives them as objects (for
    `GeminiToMessages`), `feed` as SSE frames, `[DONE]` after the finish (and usage) chunk."""

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.started = False
        self.calls = 0
        self.closed = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat chunks for one upstream chunk; after the last, none."""
        if self.closed:
            return []
        if isinstance(event.get("error"), dict):
            self.closed = True
            return [{"error": {"message": str(event["error"].get("message", ""))}}]
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            self.id = "chatcmpl-" + str(event.get("responseId") or "")
            out.append(self._chunk({"role": "assistant", "content": ""}))
        candidate = _candidate(event)
        for part in (candidate.get("content") or {}).get("parts") or []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                index = self.calls
                self.calls += 1
                delta = {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": _call_id(self.id[9:], index, call),
                            "type": "function",
                            "function": {
                                "name": call.get("name"),
                                "arguments": _DUMP(call.get("args") or {}),
                            },
                        }
                    ]
                }
                out.append(self._chunk(delta))
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                out.append(self._chunk({key: part["text"]}))
        reason = candidate.get("finishReason")
        if reason:
            self.closed = True
            out.append(self._chunk({}, _finish(reason, self.calls > 0)))
            if self.include_usage:
                usage = gemini_usage_to_chat(event.get("usageMetadata") or {})
                final = self._chunk({})
                final["choices"] = []
                final["usage"] = usage
                out.append(final)
        return out

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        frames = [_data(chunk) for chunk in self.chunks(event)]
        if self.closed and frames:
            frames.append(DONE)
        return frames


class GeminiToMessages:
    """A Gemini stream as an Anthropic messages stream (Gemini -> chat chunks -> messages)."""

    def __init__(self, *, model: str) -> None:
        self.chat = GeminiToChat(model=model, created=0, include_usage=True)
        self.messages = ChatToMessages(model=model)

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        for chunk in self.chat.chunks(event):
            frames += self.messages.feed(chunk)
        if self.chat.closed:
            frames += self.messages.done()
        return frames
