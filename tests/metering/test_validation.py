"""Text checked at the boundary: what is refused, what passes, and the record made storable."""

from __future__ import annotations

import json

import pytest

from metering import validation
from metering.models import UsageRecord
from metering.providers import anthropic as an
from metering.providers import openai as oa
from metering.providers.base import RequestError
from metering.proxy.call import ERROR_TYPE_LENGTH


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a\x00b", "a NUL character (U+0000)"),
        ("a\ud800b", "a lone surrogate (U+D800)"),
        ("\udfff", "a lone surrogate (U+DFFF)"),
        ("esc\x1b[0m", "a control character (U+001B)"),
        ("tab\there", "a control character (U+0009)"),
        ("del\x7f", "a control character (U+007F)"),
        ("c1\x85", "a control character (U+0085)"),
    ],
)
def test_labels_refuse_nul_surrogates_and_controls(text: str, problem: str) -> None:
    assert validation.label_problem(text) == problem
    with pytest.raises(RequestError) as caught:
        validation.label_check(text, param="metadata.intent")
    assert caught.value.param == "metadata.intent"
    assert caught.value.message == f"Invalid 'metadata.intent': the text contains {problem}."


@pytest.mark.parametrize("text", ["", "code-review", "Überprüfung 😀", "名前", "a b-c_d.e/f"])
def test_ordinary_labels_pass(text: str) -> None:
    assert validation.label_problem(text) is None


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(model="gpt\x00"), "model"),
        (_chat(model="gpt\ud800"), "model"),
        (_chat(metadata={"intent": "x\x00"}), "metadata.intent"),
        (_chat(metadata={"intent": "x\ud800"}), "metadata.intent"),
        (_chat(metadata={"team": "a\x1bb"}), "metadata.team"),
        (_chat(messages=[{"role": "user", "content": "hi\x00"}]), "messages[0].content"),
        (_chat(messages=[{"role": "user", "content": "hi\udc00"}]), "messages[0].content"),
        (
            _chat(tools=[{"type": "function", "function": {"name": "f\x00"}}]),
            "tools[0].function.name",
        ),
    ],
)
def test_requests_with_bad_text_are_refused_naming_the_field(body: str, param: str) -> None:
    # json.dumps writes NUL and surrogates as \u escapes, as any JSON client does.
    with pytest.raises(RequestError) as caught:
        oa.parse_request("chat", body.encode())
    assert caught.value.param == param


def test_anthropic_requests_are_checked_alike() -> None:
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x\ud800"}]}
    with pytest.raises(RequestError) as caught:
        an.parse_request("messages", json.dumps(body).encode())
    assert caught.value.param == "messages[0].content"


def test_prompts_keep_tabs_newlines_and_escapes() -> None:
    text = "line one\n\tindented \x1b[1mbold\x1b[0m \\u0000 literally"
    parsed = oa.parse_request("chat", _chat(messages=[{"role": "user", "content": text}]).encode())
    assert parsed.body["messages"][0]["content"] == text


def test_a_valid_surrogate_pair_is_one_character_and_passes() -> None:
    parsed = oa.parse_request(
        "chat", b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    )
    assert parsed.body["messages"][0]["content"] == "😀"


def test_a_deeply_nested_body_is_walked_without_recursion() -> None:
    depth = 5000
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":' + b"[" * depth
    body += b'"\\u0000"' + b"]" * depth + b"}"
    data = json.loads(body)
    with pytest.raises(RequestError):
        validation.body_check(data, body)


@pytest.mark.parametrize(
    ("raw", "text"),
    [("caf\xc3\xa9", "café"), ("review", "review")],
)
def test_header_text_is_read_as_utf8(raw: str, text: str) -> None:
    # Servers hand header bytes over as latin-1: "café" in UTF-8 arrives as "cafÃ©".
    assert validation.header_text(raw, name="x-intent") == text


@pytest.mark.parametrize("raw", ["\xed\xa0\x80", "a\x00", "\xff", "a\x1bb"])
def test_header_text_refuses_surrogates_nul_and_bad_utf8(raw: str) -> None:
    with pytest.raises(RequestError) as caught:
        validation.header_text(raw, name="x-intent")
    assert caught.value.param == "x-intent"


def test_record_sanitised_makes_every_text_field_storable() -> None:
    record = UsageRecord(
        request_id="req_1",
        model="m\x00",
        intent="a\ud800b",
        error_type="x" * 500,
        input_tokens=7,
        output_tokens=3,
    )
    clean = validation.record_sanitised(record)
    assert (clean.model, clean.intent) == ("m\ufffd", "a\ufffdb")
    assert clean.error_type == "x" * ERROR_TYPE_LENGTH
    assert (clean.input_tokens, clean.output_tokens, clean.request_id) == (7, 3, "req_1")
    assert record.intent == "a\ud800b", "the original is left as it was"


def test_upstream_body_is_encoded_without_the_fields_decided_after_the_hold() -> None:
    parsed = oa.parse_request(
        "chat", _chat(max_tokens=900, metadata={"intent": "t", "k": "v"}).encode()
    )
    encoded = oa.encode_upstream_body(parsed, force_include_usage=False)
    assert b'"model"' not in encoded.rest and b"max_tokens" not in encoded.rest
    body = json.loads(encoded.finish(upstream_model="up", max_output_tokens=40))
    assert body == {
        "model": "up",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"k": "v"},
    }
    assert (
        json.loads(encoded.finish(upstream_model="up", max_output_tokens=None))["max_tokens"] == 900
    )


def test_chat_n_and_best_of_are_the_choices() -> None:
    assert oa.parse_request("chat", _chat().encode()).choices == 1
    assert oa.parse_request("chat", _chat(n=4).encode()).choices == 4
    assert oa.parse_request("chat", _chat(n=2, best_of=5).encode()).choices == 5
    with pytest.raises(RequestError) as caught:
        oa.parse_request("chat", _chat(n=0).encode())
    assert caught.value.param == "n"
