"""Scripted answers, selected by the request, so a client's whole loop runs against the mock.

- Tools offered (and `tool_choice` not "none") and the latest turn is not a tool result: a
  call of one offered tool, the one named by a `mock-tool: NAME {json input}` line in the
  prompt when it is offered, else the first; its input is the directive's JSON, else an
  example built from the tool's schema.
- The latest turn is a tool result, or no tools: the fixed words (`common.WORDS`).
- Structured output asked (chat `response_format` json_schema / json_object, responses
  `text.format`, Anthropic `output_format` / `output_config.format`): a JSON document that
  fits the schema (every property, the first enum value, the first branch of an anyOf).
- Anthropic `thinking` enabled or adaptive: a thinking block before the answer.
"""

from __future__ import annotations

from typing import Any

from metering.mock.common import DUMP, Answer, tool_directive
from metering.providers.base import ParsedRequest

_MAX_DEPTH = 8


def answer_for(parsed: ParsedRequest) -> Answer:
    body = parsed.body
    endpoint = parsed.endpoint
    thinking = endpoint == "messages" and _thinking_on(body.get("thinking"))
    if endpoint == "embeddings":
        return Answer()
    tools = _tools(endpoint, body)
    if (
        tools
        and body.get("tool_choice") not in ("none", {"type": "none"})
        and not _gemini_tools_off(body)
        and not _after_tool(endpoint, body)
    ):
        return _tool_call(tools, parsed.prompt_text, thinking)
    schema = _output_schema(endpoint, body)
    if schema is not None:
        return Answer(kind="json", json_text=DUMP(example(schema)), thinking=thinking)
    return Answer(thinking=thinking)


def _gemini_tools_off(body: dict[str, Any]) -> bool:
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    return isinstance(config, dict) and config.get("mode") == "NONE"


def _thinking_on(thinking: Any) -> bool:
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _tools(endpoint: str, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Offered tool name -> its input schema (function / client tools only)."""
    found: dict[str, dict[str, Any]] = {}
    if endpoint == "converse":
        config = body.get("toolConfig")
        for tool in (config.get("tools") or []) if isinstance(config, dict) else []:
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if isinstance(spec, dict):
                found[str(spec.get("name"))] = (spec.get("inputSchema") or {}).get("json") or {}
        return found
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if endpoint == "chat" and tool.get("type") == "function":
            function = tool.get("function") or {}
            found[str(function.get("name"))] = function.get("parameters") or {}
        elif endpoint == "responses" and tool.get("type") == "function":
            found[str(tool.get("name"))] = tool.get("parameters") or {}
        elif endpoint == "messages" and "input_schema" in tool:
            found[str(tool.get("name"))] = tool.get("input_schema") or {}
        elif endpoint == "generate_content":
            for function in tool.get("functionDeclarations") or []:
                if isinstance(function, dict):
                    schema = function.get("parametersJsonSchema", function.get("parameters"))
                    found[str(function.get("name"))] = schema or {}
    return found


def _after_tool(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether the latest turn hands back a tool result (then the model answers)."""
    if endpoint == "chat":
        messages = body.get("messages") or []
        return (
            bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        )
    if endpoint == "converse":
        messages = body.get("messages") or []
        blocks = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else []
        return isinstance(blocks, list) and any(
            isinstance(block, dict) and "toolResult" in block for block in blocks
        )
    if endpoint == "generate_content":
        contents = body.get("contents") or []
        parts = contents[-1].get("parts") if contents and isinstance(contents[-1], dict) else []
        return isinstance(parts, list) and any(
            isinstance(part, dict) and "functionResponse" in part for part in parts
        )
    if endpoint == "responses":
        items = body.get("input")
        if not isinstance(items, list) or not items or not isinstance(items[-1], dict):
            return False
        return items[-1].get("type") in ("function_call_output", "custom_tool_call_output")
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict):
        return False
    content = messages[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _tool_call(tools: dict[str, dict[str, Any]], prompt: str, thinking: bool) -> Answer:
    name = next(iter(tools))
    arguments = None
    directive = tool_directive(prompt)
    if directive is not None and directive[0] in tools:
        name, arguments = directive
    if arguments is None:
        value = example(tools[name])
        arguments = value if isinstance(value, dict) else {}
    return Answer(kind="tool", tool_name=name, tool_input=arguments, thinking=thinking)


def _output_schema(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    if endpoint == "chat":
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return (fmt.get("json_schema") or {}).get("schema") or {}
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return {"type": "object", "properties": {"answer": {"type": "string"}}}
        return None
    if endpoint == "generate_content":
        config = body.get("generationConfig") or {}
        if config.get("responseMimeType") != "application/json":
            return None
        schema = config.get("responseJsonSchema", config.get("responseSchema"))
        return schema if isinstance(schema, dict) else {"type": "object"}
    if endpoint == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    else:
        fmt = body.get("output_format")
        config = body.get("output_config")
        if fmt is None and isinstance(config, dict):
            fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}
    return None


def example(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that fits a JSON schema (the common keywords; deterministic)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: example(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items")
        return [example(items, root, depth + 1)] if isinstance(items, dict) else []
    return {"string": "mock", "integer": 1, "number": 1, "boolean": True}.get(
        kind, "mock" if kind is None else None
    )
