"""Claude on AWS Bedrock (kind `bedrock_anthropic`, InvokeModel): the URLs, headers and body,
the kind's protocol, `InvokeStreamMeter` (event-stream frames of base64 Anthropic events
re-emitted as Anthropic SSE, split anywhere), error mapping, prices, and the mock's InvokeModel
paths read by botocore's EventStreamBuffer, the anthropic SDK's own Bedrock decoder and client,
boto3's bedrock-runtime client and `anthropic.types.Message`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import boto3
import botocore.config
import httpx
import pytest
from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder
from botocore.eventstream import EventStreamBuffer
from django.test import Client

from metering import price_catalog, upstream
from metering.mock import bedrock as mock_bedrock
from metering.mock.server import MockServer, start_in_thread
from metering.models import Upstream
from metering.providers import anthropic as anthropic_protocol
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import Usage
from metering.proxy import crossing
from metering.upstream import UpstreamTarget
from tests.budgets.conftest import Cast

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
QUOTED = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
TARGET = UpstreamTarget(
    "bedrock_anthropic", "https://bedrock-runtime.us-east-1.amazonaws.com", "", "", 1.0, 1.0
)
MESSAGES = [{"role": "user", "content": "Hello"}]

EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 6,
                "cache_creation_input_tokens": 2,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " é\n"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    },
    {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {"inputTokenCount": 10, "outputTokenCount": 3},
    },
]


def _frames(events: list[dict]) -> bytes:
    return b"".join(mock_bedrock.chunk_frame(event) for event in events)


def _sse(events: list[dict]) -> bytes:
    out = b""
    for event in events:
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        out += f"event: {event['type']}\ndata: {data}\n\n".encode()
    return out


def _meter() -> crossing.InvokeStreamMeter:
    return crossing.InvokeStreamMeter(ANTHROPIC.stream_meter("messages", strip_usage_chunk=False))


# --- URLs, headers, bodies, protocol ---------------------------------------------------------


def test_urls_quote_the_model_id_as_botocore_does() -> None:
    base = "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert upstream.upstream_url(TARGET, "messages", MODEL) == f"{base}/model/{QUOTED}/invoke"
    assert upstream.upstream_url(TARGET, "messages", MODEL, stream=True) == (
        f"{base}/model/{QUOTED}/invoke-with-response-stream"
    )


def test_headers_carry_no_key_and_no_client_version() -> None:
    client = {
        "authorization": "Bearer tb-secret",
        "x-api-key": "tb-secret",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "x",
        "accept": "text/event-stream",
    }
    headers = upstream.upstream_headers(TARGET, client, "req-1")
    assert headers == {
        "content-type": "application/json",
        "x-request-id": "req-1",
        "accept": "application/json",
    }


def test_body_names_the_bedrock_version_not_the_model_nor_the_stream() -> None:
    body = json.dumps(
        {
            "model": "claude-bedrock",
            "max_tokens": 99,
            "stream": True,
            "anthropic_version": "vertex-2023-10-16",
            "messages": MESSAGES,
            "metadata": {"intent": "code", "user_id": "u1"},
        }
    ).encode()
    parsed = anthropic_protocol.parse_request("messages", body)
    encoded = anthropic_protocol.encode_bedrock_body(parsed)
    sent = json.loads(encoded.finish(upstream_model=MODEL, max_output_tokens=40))
    assert sent == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 40,
        "messages": MESSAGES,
        "metadata": {"user_id": "u1"},
    }
    unclamped = json.loads(encoded.finish(upstream_model=MODEL, max_output_tokens=None))
    assert unclamped["max_tokens"] == 99 and "model" not in unclamped


def test_the_kind_speaks_anthropic() -> None:
    assert crossing.upstream_endpoint("messages", "bedrock_anthropic") == ""
    assert crossing.upstream_endpoint("chat", "bedrock_anthropic") == "messages"
    with pytest.raises(crossing.errors.ProxyError):
        crossing.upstream_endpoint("embeddings", "bedrock_anthropic")
    assert Upstream.Kind.BEDROCK_ANTHROPIC.label == "AWS Bedrock (Anthropic)"


def test_bedrock_errors_map_to_the_client_shape() -> None:
    content = b'{"message":"Too many requests, please wait before trying again."}'
    answer = json.loads(crossing.error_answer(ANTHROPIC, 429, content))
    assert answer == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Too many requests, please wait before trying again.",
            "code": "upstream_error",
        },
    }


def test_bedrock_claude_ids_find_their_aws_catalogue_prices() -> None:
    found, unmatched = price_catalog.catalog_models([(MODEL, "aws")])
    assert unmatched == []
    (price,) = found[MODEL]
    assert price.provider == "aws" and price.input > 0 and price.output > price.input
    assert price_catalog._KIND_TO_PROVIDER[Upstream.Kind.BEDROCK_ANTHROPIC] == "aws"


# --- the meter ------------------------------------------------------------------------------


def test_the_meter_reemits_anthropic_sse_and_meters_it() -> None:
    meter = _meter()
    out = meter.feed(_frames(EVENTS))
    meter.close()
    assert out == _sse(EVENTS)
    assert meter.state.usage == Usage(
        input_tokens=18, output_tokens=3, cached_input_tokens=6, cache_write_tokens=2
    )
    assert meter.state.finished and meter.state.error is None
    assert "".join(meter.state.output_text) == "Hi é\n"


def test_frames_split_at_every_byte_boundary_give_the_same_sse() -> None:
    data = _frames(EVENTS)
    whole = _sse(EVENTS)
    for cut in range(len(data) + 1):
        meter = _meter()
        out = meter.feed(data[:cut]) + meter.feed(data[cut:]) + meter.close()
        assert out == whole, cut
        assert meter.state.usage is not None and meter.state.finished
    meter = _meter()
    assert b"".join(meter.feed(data[i : i + 1]) for i in range(len(data))) == whole
    assert meter.state.usage == Usage(
        input_tokens=18, output_tokens=3, cached_input_tokens=6, cache_write_tokens=2
    )


def test_an_exception_frame_is_an_anthropic_error_event() -> None:
    meter = _meter()
    meter.feed(_frames(EVENTS[:4]))
    out = meter.feed(mock_bedrock.exception("throttlingException", "Slow down."))
    assert out.startswith(b"event: error\ndata: ")
    error = json.loads(out.split(b"data: ", 1)[1])
    assert error == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Slow down."},
    }
    assert meter.state.error == "rate_limit_error"
    assert meter.state.usage is None
    assert meter.state.partial_usage is not None and meter.state.partial_usage.input_tokens == 18
    assert meter.state.output_text == ["Hi"]


def test_a_broken_frame_stops_the_stream_and_is_recorded() -> None:
    corrupt = bytearray(_frames(EVENTS))
    corrupt[30] ^= 0xFF
    meter = _meter()
    assert meter.feed(bytes(corrupt)) == b""
    assert meter.feed(_frames(EVENTS)) == b""
    assert meter.state.error == "bad_frame" and meter.state.usage is None


def test_frames_that_are_not_anthropic_events_are_skipped() -> None:
    odd = mock_bedrock.frame(
        {":event-type": "chunk", ":message-type": "event"}, b'{"bytes":"not base64!"}'
    )
    listy = mock_bedrock.frame(
        {":event-type": "chunk", ":message-type": "event"},
        json.dumps({"bytes": base64.b64encode(b"[1]").decode()}).encode(),
    )
    other = mock_bedrock.event("metadata", {"usage": {}})
    forged = mock_bedrock.chunk_frame({"type": "ping\n\nevent: message_stop"})
    meter = _meter()
    assert meter.feed(odd + listy + other + forged) == b""
    # An event written over several lines is relayed on one.
    spread = json.dumps({"type": "ping", "note": "a\nb"}, indent=2).encode()
    frame = mock_bedrock.frame(
        {":event-type": "chunk", ":message-type": "event"},
        json.dumps({"bytes": base64.b64encode(spread).decode()}).encode(),
    )
    assert meter.feed(frame) == b'event: ping\ndata: {"type":"ping","note":"a\\nb"}\n\n'
    assert meter.feed(_frames(EVENTS)) == _sse(EVENTS)


def test_the_chat_surface_translates_the_same_events() -> None:
    meter = crossing.InvokeStreamMeter(
        crossing.stream_meter("chat", "messages", MODEL, include_usage=True)
    )
    out = meter.feed(_frames(EVENTS)) + meter.close()
    chunks = [
        json.loads(line[6:])
        for line in out.decode().split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hi é\n"
    assert chunks[-1]["usage"]["prompt_tokens"] == 18
    assert out.rstrip().endswith(b"data: [DONE]")
    assert meter.state.usage is not None and meter.state.usage.output_tokens == 3


# --- the mock -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = start_in_thread()
    yield server
    server.stop()


SIGNED = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIAFAKE/20260101/us-east-1/bedrock/x"}
BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 12, "messages": MESSAGES}


def test_the_mock_invoke_answer_is_an_anthropic_message(mock: MockServer) -> None:
    answer = httpx.post(f"{mock.url}/model/{QUOTED}/invoke", json=BODY, headers=SIGNED)
    assert answer.status_code == 200
    message = anthropic.types.Message.model_validate(answer.json())
    assert message.model == MODEL
    assert message.content[0].text.startswith(" the quick brown fox")  # type: ignore[union-attr]
    assert message.usage.output_tokens == 12 and message.stop_reason == "max_tokens"


def test_the_mock_stream_reads_with_botocore_and_the_sdk_decoder(mock: MockServer) -> None:
    answer = httpx.post(
        f"{mock.url}/model/{QUOTED}/invoke-with-response-stream", json=BODY, headers=SIGNED
    )
    assert answer.headers["content-type"] == "application/vnd.amazon.eventstream"
    buffer = EventStreamBuffer()
    buffer.add_data(answer.content)
    messages = list(buffer)
    assert {m.headers[":event-type"] for m in messages} == {"chunk"}
    assert all(m.headers[":message-type"] == "event" for m in messages)
    events = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"])) for m in messages]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert "amazon-bedrock-invocationMetrics" in events[-1]
    decoded = list(AWSEventStreamDecoder().iter_bytes(iter([answer.content])))
    assert [sse.event for sse in decoded] == [e["type"] for e in events]
    assert [sse.json() for sse in decoded] == events
    # Our meter gives the same events as SSE.
    meter = _meter()
    assert meter.feed(answer.content) == _sse(events)
    assert meter.state.usage is not None and meter.state.usage.output_tokens == 12


def test_the_mock_stream_error_is_an_exception_frame(mock: MockServer) -> None:
    body = {**BODY, "max_tokens": 30, "metadata": {"mock_stream_error_at": 3}}
    answer = httpx.post(
        f"{mock.url}/model/{QUOTED}/invoke-with-response-stream", json=body, headers=SIGNED
    )
    buffer = EventStreamBuffer()
    buffer.add_data(answer.content)
    last = list(buffer)[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "serviceUnavailableException"
    decoded = list(AWSEventStreamDecoder().iter_bytes(iter([answer.content])))
    assert decoded[-1].event == "error"


def test_the_mock_refuses_what_bedrock_refuses(mock: MockServer) -> None:
    url = f"{mock.url}/model/{QUOTED}/invoke"
    unsigned = httpx.post(url, json=BODY)
    assert unsigned.status_code == 403 and "message" in unsigned.json()
    for bad in (
        {**BODY, "model": MODEL},
        {**BODY, "stream": True},
        {**BODY, "anthropic_version": None},
    ):
        refused = httpx.post(url, json=bad, headers=SIGNED)
        assert refused.status_code == 400
        assert set(refused.json()) == {"message"}
    # Not a Claude id: no InvokeModel route in the mock.
    other = httpx.post(f"{mock.url}/model/amazon.nova-pro-v1%3A0/invoke", json=BODY, headers=SIGNED)
    assert other.status_code == 404
    assert mock_bedrock.invoke_call(f"/model/{QUOTED}/invoke") == (MODEL, False)
    for prefix in ("", "eu.", "apac.", "global."):
        path = f"/model/{prefix}anthropic.claude-v1%3A0/invoke-with-response-stream"
        assert mock_bedrock.invoke_call(path) == (f"{prefix}anthropic.claude-v1:0", True)


def test_the_anthropic_bedrock_sdk_reads_the_mock(mock: MockServer) -> None:
    client = anthropic.AnthropicBedrock(
        aws_access_key="AKIAFAKE",
        aws_secret_key="fake",
        aws_region="us-east-1",
        base_url=mock.url,
        max_retries=0,
    )
    message = client.messages.create(model=MODEL, max_tokens=12, messages=MESSAGES)
    assert message.content[0].text.startswith(" the quick brown fox")  # type: ignore[union-attr]
    with client.messages.stream(model=MODEL, max_tokens=12, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 12
    assert final.content[0].text == message.content[0].text  # type: ignore[union-attr]


def test_the_mock_answers_boto3_invoke_model(mock: MockServer) -> None:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=mock.url,
        aws_access_key_id="AKIAFAKE",
        aws_secret_access_key="fake",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )
    answer = client.invoke_model(modelId=MODEL, body=json.dumps(BODY))
    assert json.loads(answer["body"].read())["usage"]["output_tokens"] == 12
    streamed = client.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(BODY))
    events = [json.loads(e["chunk"]["bytes"]) for e in streamed["body"]]
    assert events[-1]["type"] == "message_stop"


# --- the catalogue: API and pages -----------------------------------------------------------


@pytest.mark.django_db
def test_the_api_and_the_models_pages_take_bedrock_anthropic_upstreams(
    cast: Cast,
    api,  # type: ignore[no-untyped-def]
) -> None:
    body = {
        "name": "bedrock-claude",
        "kind": "bedrock_anthropic",
        "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
        "api_version": "us-east-1",
    }
    created = api("admin").post("/api/v1/upstreams/", body, format="json")
    assert created.status_code == 201, created.content
    row = Upstream.objects.get()
    assert row.get_kind_display() == "AWS Bedrock (Anthropic)"
    browser = Client()
    browser.force_login(cast.users["admin"])
    listing = browser.get("/manage/models/").content.decode()
    assert "AWS Bedrock (Anthropic)" in listing and "AWS credentials (SigV4)" in listing
    page = browser.get(f"/manage/models/upstreams/{row.pk}/").content.decode()
    assert "AWS Bedrock (Anthropic)" in page and "signed with SigV4" in page
    assert "us-east-1" in page
