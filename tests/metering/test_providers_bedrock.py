"""The Bedrock Converse protocol: usage without double counting, the body the hold finishes,
the ConverseStream meter over real event-stream frames, the chat translation, SigV4 signing,
and the mock's answers read by boto3's own bedrock-runtime client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import boto3
import botocore.config
import pytest
from django.core.exceptions import ValidationError

from metering import catalog_services, upstream
from metering.mock import bedrock as mock_bedrock
from metering.mock.server import MockServer, start_in_thread
from metering.models import Upstream
from metering.providers import bedrock
from metering.providers.base import RequestError, Usage
from metering.translate.bedrock import (
    ConverseToChat,
    chat_request_to_converse,
    converse_response_to_chat,
)
from metering.upstream import UpstreamTarget

USAGE = {
    "inputTokens": 7,
    "outputTokens": 11,
    "totalTokens": 7 + 11 + 100 + 20,
    "cacheReadInputTokens": 100,
    "cacheWriteInputTokens": 20,
}


def test_usage_counts_each_token_once() -> None:
    usage = bedrock.usage_from_body("converse", {"usage": USAGE})
    assert usage == Usage(
        input_tokens=127, output_tokens=11, cached_input_tokens=100, cache_write_tokens=20
    )
    assert usage.total_tokens == USAGE["totalTokens"]
    assert bedrock.usage_from_body("converse", {"output": {}}) is None


def test_parse_and_the_limit_the_hold_writes() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2},
    }
    parsed = bedrock.PROVIDER.for_call("anthropic.claude-v1:0", True).parse_request(
        "converse", json.dumps(body).encode()
    )
    assert (parsed.model, parsed.stream, parsed.max_output_tokens) == (
        "anthropic.claude-v1:0",
        True,
        50,
    )
    assert parsed.prompt_text == "Be brief.\nHello"
    encoded = bedrock.encode_upstream_body(parsed)
    sent = json.loads(encoded.finish(upstream_model="x", max_output_tokens=20))
    assert sent["inferenceConfig"] == {"maxTokens": 20, "temperature": 0.2}
    assert sent["messages"] == body["messages"] and "model" not in sent
    kept = json.loads(encoded.finish(upstream_model="x", max_output_tokens=None))
    assert kept["inferenceConfig"]["maxTokens"] == 50
    for bad in ({}, {"messages": []}, {"messages": [{"role": "user", "content": "x"}]}):
        with pytest.raises(RequestError):
            bedrock.parse_request("converse", json.dumps(bad).encode())
    limit = {"messages": body["messages"], "inferenceConfig": {"maxTokens": 0}}
    with pytest.raises(RequestError):
        bedrock.parse_request("converse", json.dumps(limit).encode())


def _stream_bytes() -> bytes:
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": USAGE, "metrics": {"latencyMs": 5}}),
    ]
    return b"".join(mock_bedrock.event(name, body) for name, body in events)


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_stream_meter_reads_frames_split_anywhere(size: int) -> None:
    data = _stream_bytes()
    meter = bedrock.stream_meter("converse")
    relayed = b"".join(meter.feed(data[i : i + size]) for i in range(0, len(data), size))
    meter.close()
    assert relayed == data
    assert meter.state.usage == bedrock.converse_usage(USAGE)
    assert meter.state.finished and meter.state.error is None
    assert "".join(meter.state.output_text) == "Hi there"


def test_stream_meter_exception_and_broken_frames() -> None:
    meter = bedrock.stream_meter("converse")
    meter.feed(mock_bedrock.event("contentBlockDelta", {"delta": {"text": "a"}}))
    meter.feed(mock_bedrock.exception("throttlingException", "Slow down."))
    assert meter.state.error == "throttlingException" and meter.state.usage is None
    corrupt = bytearray(_stream_bytes())
    corrupt[30] ^= 0xFF  # inside the first frame's headers: its CRC no longer holds
    broken = bedrock.stream_meter("converse")
    broken.feed(bytes(corrupt))
    assert broken.state.error == "bad_frame" and broken.state.usage is None


def test_chat_request_and_answers_translate() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "Sunny"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 30,
        "stop": "END",
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
    }
    body = chat_request_to_converse(chat)
    assert body["system"] == [{"text": "Be brief."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0]["toolUse"]["input"] == {"city": "Oslo"}
    assert body["messages"][2]["content"][0]["toolResult"]["toolUseId"] == "t1"
    assert body["messages"][2]["content"][1] == {"text": "Thanks"}
    assert body["inferenceConfig"] == {"maxTokens": 30, "stopSequences": ["END"]}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "weather"
    answer = converse_response_to_chat(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
            "stopReason": "max_tokens",
            "usage": USAGE,
        },
        model="m",
        created=0,
    )
    assert answer["choices"][0]["message"]["content"] == "Hi"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["prompt_tokens"] == 127
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
    stream = ConverseToChat(model="m", created=0, include_usage=True)
    frames = stream.feed("messageStart", {"role": "assistant"})
    frames += stream.feed("contentBlockDelta", {"delta": {"text": "Hi"}})
    frames += stream.feed("messageStop", {"stopReason": "end_turn"})
    frames += stream.feed("metadata", {"usage": USAGE})
    assert frames[-1] == b"data: [DONE]\n\n"
    final = json.loads(frames[-2][6:])
    assert final["usage"]["completion_tokens"] == 11


TARGET = UpstreamTarget(
    kind="bedrock",
    base_url="https://bedrock-runtime.eu-central-1.amazonaws.com",
    credential_env="",
    api_version="",
    connect_timeout=1.0,
    read_timeout=1.0,
)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTEST00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    upstream.reset_aws_credentials()
    yield
    upstream.reset_aws_credentials()


def test_sigv4_signing_region_and_cached_credentials(aws_env: None) -> None:
    url = upstream.upstream_url(TARGET, "converse", "anthropic.claude-v1:0", stream=True)
    assert url.endswith("/model/anthropic.claude-v1%3A0/converse-stream")
    headers = upstream.sign_bedrock(TARGET, url, b"{}", {"content-type": "application/json"})
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAUNITTEST00000000/")
    assert "/eu-central-1/bedrock/aws4_request" in auth
    assert "SignedHeaders=content-type;host;x-amz-date" in auth
    assert upstream.bedrock_region(TARGET.__class__(**{**TARGET.__dict__, "api_version": "x"}))
    # Resolved once: a changed environment is not read on the hot path.
    first = upstream.aws_credentials()
    assert upstream.aws_credentials() is first
    # Pure CPU and short: far below a millisecond a call on this machine.
    start = time.perf_counter()
    for _ in range(200):
        upstream.sign_bedrock(TARGET, url, b"{}" * 500, {"content-type": "application/json"})
    assert (time.perf_counter() - start) / 200 < 0.002


@pytest.fixture(scope="module")
def mock_server() -> Iterator[MockServer]:
    server = start_in_thread()
    yield server
    server.stop()


def _boto(server: MockServer) -> object:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="AKIAFAKE",
        aws_secret_access_key="fake",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )


def test_the_mock_answers_boto3_converse(mock_server: MockServer) -> None:
    client = _boto(mock_server)
    answer = client.converse(  # type: ignore[attr-defined]
        modelId="mock-claude-cached",
        messages=[{"role": "user", "content": [{"text": "Hello there, my friend"}]}],
        inferenceConfig={"maxTokens": 8},
    )
    assert answer["output"]["message"]["content"][0]["text"].startswith(" the quick")
    assert answer["stopReason"] == "max_tokens"
    usage = answer["usage"]
    assert usage["outputTokens"] == 8 and usage["cacheReadInputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["cacheReadInputTokens"] + 8


def test_the_mock_answers_boto3_converse_stream(mock_server: MockServer) -> None:
    client = _boto(mock_server)
    answer = client.converse_stream(  # type: ignore[attr-defined]
        modelId="anthropic.mock-claude-v1:0",
        messages=[{"role": "user", "content": [{"text": "Hello"}]}],
        inferenceConfig={"maxTokens": 5},
    )
    events = list(answer["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert text == " the quick brown fox jumps"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 5
    assert mock_server.mock.last.path == "/model/anthropic.mock-claude-v1%3A0/converse-stream"


def test_the_mock_answers_boto3_count_tokens(mock_server: MockServer) -> None:
    """boto3's CountTokens, both forms, against the mock: the count is the input the same
    Converse or InvokeModel call is charged."""
    client = _boto(mock_server)
    turn = [{"role": "user", "content": [{"text": "Hello there, my friend"}]}]
    counted = client.count_tokens(  # type: ignore[attr-defined]
        modelId="anthropic.mock-claude-v1:0", input={"converse": {"messages": turn}}
    )["inputTokens"]
    answer = client.converse(  # type: ignore[attr-defined]
        modelId="anthropic.mock-claude-v1:0", messages=turn, inferenceConfig={"maxTokens": 4}
    )
    assert counted == answer["usage"]["inputTokens"] > 0
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hello there, my friend"}],
    }
    invoked = client.count_tokens(  # type: ignore[attr-defined]
        modelId="us.anthropic.mock-claude-v1:0",
        input={"invokeModel": {"body": json.dumps(body).encode()}},
    )["inputTokens"]
    assert invoked == counted
    with pytest.raises(client.exceptions.ClientError) as refused:  # type: ignore[attr-defined]
        client.count_tokens(  # type: ignore[attr-defined]
            modelId="us.anthropic.mock-claude-v1:0",
            input={"invokeModel": {"body": json.dumps({"max_tokens": 4}).encode()}},
        )
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_the_mock_tool_use_through_boto3(mock_server: MockServer) -> None:
    client = _boto(mock_server)
    tool = {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}
    answer = client.converse(  # type: ignore[attr-defined]
        modelId="mock-claude",
        messages=[{"role": "user", "content": [{"text": 'mock-tool: weather {"city": "Oslo"}'}]}],
        toolConfig={"tools": [tool]},
    )
    (block,) = answer["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "weather"
    assert block["toolUse"]["input"] == {"city": "Oslo"}
    assert answer["stopReason"] == "tool_use"


def test_credentials_resolve_off_the_event_loop(aws_env: None) -> None:
    import asyncio
    import threading

    seen: list[str] = []
    real = upstream.aws_credentials

    def spy() -> object | None:
        seen.append(threading.current_thread().name)
        return real()

    async def main() -> None:
        upstream.aws_credentials = spy  # type: ignore[assignment]
        try:
            await upstream.aws_credentials_ready()
        finally:
            upstream.aws_credentials = real  # type: ignore[assignment]

    asyncio.run(main())
    assert seen and seen[0] != threading.main_thread().name
    assert upstream.aws_credentials() is not None


@pytest.mark.parametrize(
    ("base_url", "region", "refused"),
    [
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", "", False),  # the URL's region
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", "eu-west-1", False),
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", "us-east-1", True),  # not the URL's
        ("https://vpce-1.bedrock-runtime.example.internal", "us-gov-west-1", False),
        ("https://vpce-1.bedrock-runtime.example.internal", "ap-southeast-2", False),
        ("https://vpce-1.bedrock-runtime.example.internal", "2023-05-31", True),  # a version
        ("https://vpce-1.bedrock-runtime.example.internal", "EU-WEST-1", True),
    ],
)
def test_a_bedrock_upstreams_region_is_an_aws_region_and_the_urls(
    base_url: str, region: str, refused: bool
) -> None:
    """A signature is for one region: a region that is not one, or not the URL's, is refused
    when the upstream is saved rather than by AWS on every call."""
    for kind in (Upstream.Kind.BEDROCK, Upstream.Kind.BEDROCK_ANTHROPIC):
        row = Upstream(name="b", kind=kind, base_url=base_url, api_version=region)
        if not refused:
            catalog_services._check_upstream(row)
            continue
        with pytest.raises(ValidationError) as failed:
            catalog_services._check_upstream(row)
        assert "api_version" in failed.value.message_dict
