"""Vertex AI upstreams: the URLs and bodies of Gemini and Claude on Vertex, the kinds'
protocols, the access token (google-auth's real signing against the mock's token endpoint,
fetched once, refreshed before it expires, a bad key file a clear error), the mock's Vertex
paths read by the anthropic SDK's own AnthropicVertex client, prices and the upstream check."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from django.core.exceptions import ValidationError

from metering import catalog_services, price_catalog, upstream
from metering.mock.server import MockServer, start_in_thread
from metering.models import Upstream
from metering.providers import anthropic as anthropic_protocol
from metering.proxy import crossing, errors
from metering.upstream import UpstreamTarget
from tests.budgets.conftest import Cast
from tests.google_accounts import Account, grants, write_account

BASE = "/v1/projects/p-test/locations/us-east5"
CLAUDE = "claude-sonnet-4-5@20250929"
ENV = "TB_UPSTREAM_KEY_VERTEX_UNIT"


def target(kind: str, base_url: str = f"https://us-east5-aiplatform.googleapis.com{BASE}"):
    return UpstreamTarget(kind, base_url, ENV, "us-east5", 5.0, 5.0)


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServer]:
    server = start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def account(mock: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    found = write_account(tmp_path, f"unit-{tmp_path.name[-12:]}".lower(), f"{mock.url}/token")
    found.register(mock.url)
    monkeypatch.setenv(ENV, str(found.path))
    upstream.reset_google_credentials()
    yield found
    upstream.reset_google_credentials()


# --- URLs, headers, bodies, protocols -------------------------------------------------------


def test_urls_name_the_publisher_model_and_method() -> None:
    gemini, claude = target("vertex"), target("vertex_anthropic")
    host = "https://us-east5-aiplatform.googleapis.com"
    assert upstream.upstream_url(gemini, "generate_content", "gemini-2.5-flash") == (
        f"{host}{BASE}/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert upstream.upstream_url(gemini, "generate_content", "gemini-2.5-flash", True) == (
        f"{host}{BASE}/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert upstream.upstream_url(claude, "messages", CLAUDE) == (
        f"{host}{BASE}/publishers/anthropic/models/{CLAUDE}:rawPredict"
    )
    assert upstream.upstream_url(claude, "messages", CLAUDE, True) == (
        f"{host}{BASE}/publishers/anthropic/models/{CLAUDE}:streamRawPredict"
    )
    assert upstream.upstream_url(claude, "count_tokens", CLAUDE) == (
        f"{host}{BASE}/publishers/anthropic/models/count-tokens:rawPredict"
    )


def test_headers_carry_no_key_file_path_and_no_client_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "/secret/path/key.json")
    client = {"anthropic-version": "2023-06-01", "anthropic-beta": "x", "authorization": "tb-1"}
    headers = upstream.upstream_headers(target("vertex_anthropic"), client, "req-1")
    assert headers == {
        "content-type": "application/json",
        "x-request-id": "req-1",
        "anthropic-beta": "x",
    }


def test_claude_body_names_the_vertex_version_not_the_model() -> None:
    body = {
        "model": "public-claude",
        "anthropic_version": "2023-06-01",
        "max_tokens": 900,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
        "metadata": {"intent": "code"},
    }
    parsed = anthropic_protocol.parse_request("messages", json.dumps(body).encode())
    encoded = anthropic_protocol.encode_vertex_body(parsed)
    sent = json.loads(encoded.finish(upstream_model=CLAUDE, max_output_tokens=64))
    assert sent == {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert next(iter(sent)) == "anthropic_version"
    # No limit given: the client's own; a dependent-limit update keeps the variant.
    kept = json.loads(encoded.finish(upstream_model=CLAUDE, max_output_tokens=None))
    assert kept["max_tokens"] == 900 and "model" not in kept
    lowered = encoded.with_fields({"thinking": {"type": "enabled", "budget_tokens": 10}})
    assert isinstance(lowered, anthropic_protocol.VertexMessagesBody)
    final = json.loads(lowered.finish(upstream_model=CLAUDE, max_output_tokens=32))
    assert final["anthropic_version"] == "vertex-2023-10-16" and "model" not in final
    assert final["thinking"]["budget_tokens"] == 10
    # The native Anthropic body is unchanged: the model first.
    native = anthropic_protocol.encode_upstream_body(parsed)
    native_body = native.finish(upstream_model=CLAUDE, max_output_tokens=5)
    assert next(iter(json.loads(native_body))) == "model"


def test_kinds_speak_gemini_and_anthropic() -> None:
    for endpoint in ("chat", "messages"):
        assert crossing.upstream_endpoint(endpoint, "vertex") == "generate_content"
    assert crossing.upstream_endpoint("generate_content", "vertex") == ""
    assert crossing.upstream_endpoint("messages", "vertex_anthropic") == ""
    assert crossing.upstream_endpoint("chat", "vertex_anthropic") == "messages"
    for endpoint, kind in (
        ("responses", "vertex_anthropic"),
        ("generate_content", "vertex_anthropic"),
    ):
        with pytest.raises(errors.ProxyError) as refused:
            crossing.upstream_endpoint(endpoint, kind)
        assert refused.value.status == 400
    with pytest.raises(errors.ProxyError):
        crossing.upstream_endpoint("embeddings", "vertex")


# --- the access token -----------------------------------------------------------------------


def test_one_token_for_many_calls_then_a_refresh_before_it_expires(
    mock: MockServer, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.auth import _helpers

    now = [0.0]
    real = upstream.clock()
    monkeypatch.setattr(upstream, "clock", lambda: real + now[0])
    # google-auth's own clock (token expiry, the assertion's iat and exp) moves with it.
    utc = _helpers.utcnow
    monkeypatch.setattr(_helpers, "utcnow", lambda: utc() + dt.timedelta(seconds=now[0]))

    async def tokens(n: int) -> list[str]:
        return await asyncio.gather(*(upstream.google_token(target("vertex")) for _ in range(n)))

    first = asyncio.run(tokens(20))
    assert len(set(first)) == 1 and first[0].startswith("ya29.mock-")
    assert grants(mock.url, account) == 1
    assert asyncio.run(tokens(5)) == first[:5]
    # 54 minutes on (6 left of the hour): still fresh, no new grant.
    now[0] += 54 * 60
    assert asyncio.run(tokens(3)) == first[:3]
    assert grants(mock.url, account) == 1
    # 56 minutes on: under 5 minutes left, so it is refreshed, once, beside the calls, which
    # go on with the token they have (still valid) rather than wait for the new one.
    now[0] += 2 * 60

    async def refreshed() -> tuple[list[str], list[str]]:
        during = await tokens(10)
        (refresh,) = [t for t in upstream._google_refreshes.values() if not t.done()]
        await refresh
        return during, await tokens(10)

    during, second = asyncio.run(refreshed())
    assert during == first[:10]
    assert len(set(second)) == 1 and second[0] != first[0]
    assert grants(mock.url, account) == 2


def test_a_failed_fetch_is_not_tried_again_by_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file that gives no token: one fetch, then every call refused at once for
    GOOGLE_RETRY_AFTER; after it, one fetch again."""
    upstream.reset_google_credentials()
    monkeypatch.setenv(ENV, str(tmp_path / "missing.json"))
    now = [0.0]
    real = upstream.clock()
    monkeypatch.setattr(upstream, "clock", lambda: real + now[0])
    fetched: list[str] = []
    original = upstream._google_refresh

    def counted(source: str) -> object:
        fetched.append(source)
        return original(source)

    monkeypatch.setattr(upstream, "_google_refresh", counted)

    async def calls(n: int) -> list[BaseException | str]:
        return await asyncio.gather(
            *(upstream.google_token(target("vertex")) for _ in range(n)), return_exceptions=True
        )

    first = asyncio.run(calls(5))
    assert all(isinstance(e, upstream.UpstreamCredentialsError) for e in first)
    assert len(fetched) == 1
    now[0] += upstream.GOOGLE_RETRY_AFTER - 1
    again = asyncio.run(calls(3))
    assert all(isinstance(e, upstream.UpstreamCredentialsError) for e in again)
    assert "tried again" in str(again[0]) and len(fetched) == 1
    now[0] += 2
    asyncio.run(calls(3))
    assert len(fetched) == 2
    upstream.reset_google_credentials()


def test_the_token_is_fetched_in_a_worker_thread(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[object] = []
    original = asyncio.to_thread

    async def spy(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        ran.append(func)
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    asyncio.run(upstream.google_token(target("vertex")))
    assert ran == [upstream._google_refresh]


@pytest.mark.parametrize("problem", ["not json", "missing file", "unset", "unknown account"])
def test_credentials_that_cannot_give_a_token_are_a_clear_error(
    mock: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    upstream.reset_google_credentials()
    path = tmp_path / "key.json"
    if problem == "not json":
        path.write_text("{not json")
    elif problem == "unknown account":
        path = write_account(tmp_path, "never-registered", f"{mock.url}/token").path
    if problem == "unset":
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, str(path))
    with pytest.raises(upstream.UpstreamCredentialsError) as failed:
        asyncio.run(upstream.google_token(target("vertex")))
    assert "Vertex" in str(failed.value) or ENV in str(failed.value)
    assert str(tmp_path) not in str(failed.value)  # the key file's path is not told
    upstream.reset_google_credentials()


def test_send_carries_the_token_and_the_mock_answers_claude(
    mock: MockServer, account: Account
) -> None:
    body = {"max_tokens": 20, "messages": [{"role": "user", "content": "Hello"}]}
    parsed = anthropic_protocol.parse_request(
        "messages", json.dumps({"model": "x", **body}).encode()
    )
    encoded = anthropic_protocol.encode_vertex_body(parsed).finish(
        upstream_model=CLAUDE, max_output_tokens=20
    )
    claude = target("vertex_anthropic", f"{mock.url}{BASE}")

    async def call() -> tuple[int, bytes, dict[str, str]]:
        headers = upstream.upstream_headers(claude, {}, "req-vertex-1")
        response = await upstream.send(
            claude, endpoint="messages", upstream_model=CLAUDE, body=encoded, headers=headers
        )
        try:
            return response.status_code, await response.aread(), headers
        finally:
            await response.aclose()
            await upstream.session().close()

    status, content, headers = asyncio.run(call())
    assert status == 200, content
    assert "authorization" not in headers  # added by send only, never kept in the headers
    usage = anthropic_protocol.usage_from_body("messages", json.loads(content))
    assert usage is not None and usage.output_tokens > 0
    assert mock.mock.book.served["req-vertex-1"] == (usage.input_tokens, usage.output_tokens)
    seen = mock.mock.book.last
    assert seen is not None and seen.headers["authorization"].startswith("Bearer ya29.mock-")


# --- the mock's Vertex paths ----------------------------------------------------------------


def _token(mock: MockServer, account: Account) -> str:
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        str(account.path), scopes=list(upstream.GOOGLE_SCOPES)
    )
    credentials.refresh(Request())
    return str(credentials.token)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_anthropic_vertex_sdk_reads_the_mock(
    mock: MockServer, account: Account, stream: bool
) -> None:
    client = anthropic.AnthropicVertex(
        region="us-east5",
        project_id="p-test",
        access_token=_token(mock, account),
        base_url=f"{mock.url}/v1",
    )
    messages = [{"role": "user", "content": "Hello"}]
    # This SDK release puts its own API version in `anthropic_version` (setdefault); the
    # value Vertex documents, which the proxy sends, is given explicitly.
    version = {"anthropic_version": "vertex-2023-10-16"}
    if stream:
        with client.messages.stream(
            model=CLAUDE, max_tokens=30, messages=messages, extra_body=version
        ) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(
            model=CLAUDE, max_tokens=30, messages=messages, extra_body=version
        )
    assert message.content[0].text.startswith(" the quick brown fox")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = mock.mock.book.last
    assert sent is not None
    method = "streamRawPredict" if stream else "rawPredict"
    assert sent.path == f"{BASE}/publishers/anthropic/models/{CLAUDE}:{method}"
    assert sent.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.body


def test_the_anthropic_vertex_sdk_counts_tokens_on_the_mock(
    mock: MockServer, account: Account
) -> None:
    client = anthropic.AnthropicVertex(
        region="us-east5",
        project_id="p-test",
        access_token=_token(mock, account),
        base_url=f"{mock.url}/v1",
    )
    counted = client.messages.count_tokens(
        model=CLAUDE,
        messages=[{"role": "user", "content": "Hello there"}],
        extra_body={"anthropic_version": "vertex-2023-10-16"},
    )
    assert counted.input_tokens > 0
    sent = mock.mock.book.last
    assert sent is not None
    assert sent.path == f"{BASE}/publishers/anthropic/models/count-tokens:rawPredict"
    assert sent.body["model"] == CLAUDE


def test_the_mock_refuses_what_vertex_refuses(mock: MockServer, account: Account) -> None:
    url = f"{mock.url}{BASE}/publishers/anthropic/models/{CLAUDE}:rawPredict"
    good = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    auth = {"authorization": f"Bearer {_token(mock, account)}"}
    assert httpx.post(url, json=good, headers=auth, timeout=5).status_code == 200
    for bad in (
        {**good, "model": CLAUDE},
        {k: v for k, v in good.items() if k != "anthropic_version"},
    ):
        answer = httpx.post(url, json=bad, headers=auth, timeout=5)
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
    for wrong in ({}, {"authorization": "Bearer ya29.not-issued"}):
        assert httpx.post(url, json=good, headers=wrong, timeout=5).status_code == 401
    gemini = f"{mock.url}{BASE}/publishers/google/models/gemini-2.5-flash:generateContent"
    contents = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    assert httpx.post(gemini, json=contents, headers=auth, timeout=5).status_code == 200
    refused = httpx.post(gemini, json=contents, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == 401


def test_the_token_endpoint_checks_the_signature(mock: MockServer, tmp_path: Path) -> None:
    honest = write_account(tmp_path, "signer-honest", f"{mock.url}/token")
    forged = write_account(tmp_path, "signer-forged", f"{mock.url}/token")
    # The forged file signs with another key while claiming the registered account.
    info = json.loads(forged.path.read_text()) | {"client_email": honest.email}
    forged.path.write_text(json.dumps(info))
    honest.register(mock.url)
    assert _token(mock, honest).startswith("ya29.mock-")
    from google.auth import exceptions

    with pytest.raises(exceptions.RefreshError):
        _token(mock, forged)


# --- prices and the upstream check ----------------------------------------------------------


def test_vertex_model_ids_find_their_catalogue_prices() -> None:
    kind = price_catalog._KIND_TO_PROVIDER[Upstream.Kind.VERTEX_ANTHROPIC]
    assert kind == price_catalog._KIND_TO_PROVIDER[Upstream.Kind.VERTEX] == "google"
    routed = [(CLAUDE, kind), ("gemini-2.5-flash", kind), ("claude-nothing-9@2099", kind)]
    models, unmatched = price_catalog.catalog_models(routed)
    assert unmatched == ["claude-nothing-9@2099"]
    claude = models[CLAUDE][-1]
    assert (claude.provider, claude.input, claude.output) == ("google", 3, 15)
    assert models["gemini-2.5-flash"][-1].provider == "google"


@pytest.mark.parametrize(
    ("base_url", "region", "field"),
    [
        (f"https://us-east5-aiplatform.googleapis.com{BASE}", "us-east5", None),
        ("https://aiplatform.googleapis.com/v1/projects/p/locations/global", "global", None),
        (f"https://us-east5-aiplatform.googleapis.com{BASE}", "", "api_version"),
        (f"https://us-east5-aiplatform.googleapis.com{BASE}", "europe-west1", "api_version"),
        ("https://us-east5-aiplatform.googleapis.com/v1", "us-east5", "base_url"),
    ],
)
def test_a_vertex_upstream_names_its_project_and_region(
    base_url: str, region: str, field: str | None
) -> None:
    for kind in (Upstream.Kind.VERTEX, Upstream.Kind.VERTEX_ANTHROPIC):
        row = Upstream(name="v", kind=kind, base_url=base_url, api_version=region)
        if field is None:
            catalog_services._check_upstream(row)
            continue
        with pytest.raises(ValidationError) as refused:
            catalog_services._check_upstream(row)
        assert field in refused.value.message_dict


@pytest.mark.django_db
def test_the_api_takes_vertex_upstreams(cast: Cast, api) -> None:  # type: ignore[no-untyped-def]
    base = f"https://us-east5-aiplatform.googleapis.com{BASE}"
    body = {"name": "vertex-claude", "kind": "vertex_anthropic", "base_url": base}
    body |= {"credential_env": "TB_UPSTREAM_KEY_VERTEX", "api_version": "us-east5"}
    created = api("admin").post("/api/v1/upstreams/", body, format="json")
    assert created.status_code == 201, created.content
    assert Upstream.objects.get().get_kind_display() == "Google Vertex AI (Anthropic)"
    wrong = body | {"name": "vertex-gemini", "kind": "vertex", "api_version": "europe-west4"}
    refused = api("admin").post("/api/v1/upstreams/", wrong, format="json")
    assert refused.status_code == 400
    assert "us-east5" in refused.json()["api_version"][0]
    assert Upstream.objects.count() == 1
