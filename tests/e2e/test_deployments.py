"""A route served by several deployments, through the real proxy and mock upstream processes:
a deployment answering 500s, refusing connections or hanging never fails a call, its breaker
opens and (once it recovers) closes, the record names the deployment that served, and every
call is charged once, as the mock's own ledger says."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from django.utils import timezone

from budgets.models import Allowance
from metering import catalog_services
from metering.models import Deployment, ModelPrice, ModelRoute, Upstream, UsageRecord
from tests import servers
from tests.e2e.conftest import PROVIDER_KEY, World, make_world
from tests.e2e.test_production import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
COOLDOWN = 5.0  # long enough that no probe falls inside a test's calls on a busy box
BREAKER_ENV = {
    "TB_BREAKER_FAILURES": "2",
    "TB_BREAKER_WINDOW_SECONDS": "60",
    "TB_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
    "TB_ROUTE_MAX_ATTEMPTS": "3",
    "TB_ROUTE_DEADLINE_SECONDS": "8",
}


@pytest.fixture(scope="module")
def routing_proxy(django_db_setup, django_db_blocker, mock_upstream_url: str) -> Iterator[str]:
    """A proxy of its own: its breakers start closed and its settings are short."""
    from django.db import connection

    port = servers.free_port()
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_upstream_url,
        "TB_SERVE_STATIC": "0",
        "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
        "REDIS_URL": None,
        **BREAKER_ENV,
    }
    process = servers.start_proxy(port, env)  # type: ignore[arg-type]
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


@pytest.fixture
def world(transactional_db, routing_proxy: str, mock_upstream_url: str) -> World:
    httpx.delete(f"{mock_upstream_url}/_mock/ledger", timeout=5)
    return make_world(routing_proxy, mock_upstream_url)


def upstream(world: World, name: str, *, base_url: str | None = None, read_timeout: int = 3):
    return Upstream.objects.create(
        name=name,
        kind="openai",
        base_url=base_url or world.mock,
        read_timeout=Decimal(read_timeout),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )


def pool(world: World, name: str, bad: tuple[Upstream, str], **route) -> ModelRoute:
    """A route whose preferred deployment is `bad` (priority 0), with a healthy one behind."""
    good = Upstream.objects.get(name="mock-openai")
    created = catalog_services.route_create(
        actor=None,
        data={
            "public_name": name,
            "upstream": bad[0],
            "upstream_model": bad[1],
            "default_max_output_tokens": 256,
            **route,
        },
    )
    catalog_services.route_deployments_set(
        actor=None,
        route=created,
        deployments=[
            {"upstream": bad[0], "upstream_model": bad[1], "priority": 0},
            {"upstream": good, "upstream_model": "gpt-4o-mini", "priority": 1},
        ],
    )
    return created


def call(world: World, model: str, *, stream: bool = False):
    client = openai.OpenAI(
        base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=30
    )
    started = time.monotonic()
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=model,
            messages=HELLO,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            text = "".join(response.iter_lines())
            assert "[DONE]" in text
            headers = response.headers
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, max_tokens=10
        )
        assert raw.parse().choices[0].message.content
        headers = raw.headers
    return headers, time.monotonic() - started


def deployment(route: str, upstream_model: str) -> Deployment:
    return Deployment.objects.get(route__public_name=route, upstream_model=upstream_model)


def metric(world: World, name: str, **labels: str) -> float:
    text = httpx.get(f"{world.proxy}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            inside = line[len(name) + 1 : line.index("}")]
            if all(part in inside.split(",") for part in want.split(",")):
                total += float(line.rsplit(" ", 1)[1])
    return total


def assert_charged_once(world: World) -> None:
    """Every record of a served call is in the mock's ledger with the same tokens, the ledger
    has nothing more, and the allowance was charged exactly their sum."""
    served = httpx.get(f"{world.mock}/_mock/ledger", timeout=5).json()
    charged = UsageRecord.objects.filter(status_code=200)
    assert {r.request_id: [r.input_tokens, r.output_tokens] for r in charged} == served["requests"]
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used == served["input_tokens"] + served["output_tokens"]
    assert allowance.reserved == 0


def test_a_deployment_answering_500s_is_fallen_back_from_then_rested(world: World) -> None:
    bad = upstream(world, "flaky-500")
    pool(world, "pool", (bad, "mock-error-500"))
    good = deployment("pool", "gpt-4o-mini")
    attempts = []
    for i in range(6):
        headers, _ = call(world, "pool", stream=i % 2 == 1)
        attempts.append(headers["x-tokenbudget-attempts"])
    # Two failures open the breaker; from then on the healthy deployment is asked first.
    assert attempts == ["2", "2", "1", "1", "1", "1"]
    records = UsageRecord.objects.order_by("created_at")
    assert [r.deployment_id for r in records] == [good.pk] * 6
    assert [r.attempts for r in records] == [2, 2, 1, 1, 1, 1]
    assert {(r.model, r.upstream_model, r.upstream_id) for r in records} == {
        ("pool", "gpt-4o-mini", good.upstream_id)
    }
    assert_charged_once(world)
    key = "pool@flaky-500/mock-error-500"
    assert (
        metric(world, "tokenbudget_deployment_requests_total", deployment=key, outcome="http_500")
        >= 2
    )
    assert metric(world, "tokenbudget_deployment_breaker_open", deployment=key) == 1


def test_a_refused_deployment_opens_its_breaker_and_closes_it_once_it_recovers(
    world: World,
) -> None:
    dead = upstream(world, "refusing", base_url=f"http://127.0.0.1:{servers.free_port()}")
    pool(world, "pool-refused", (dead, "gpt-4o-mini"))
    first = Deployment.objects.get(route__public_name="pool-refused", upstream=dead)
    good = Deployment.objects.get(route__public_name="pool-refused", priority=1)
    seen = [call(world, "pool-refused")[0]["x-tokenbudget-attempts"] for _ in range(3)]
    assert seen == ["2", "2", "1"]  # open after two refused connections
    # The deployment comes back; after the cool-down one call probes it and closes the breaker.
    Upstream.objects.filter(pk=dead.pk).update(base_url=world.mock)
    time.sleep(COOLDOWN + 0.2)
    probe, _ = call(world, "pool-refused")
    after, _ = call(world, "pool-refused")
    assert (probe["x-tokenbudget-attempts"], after["x-tokenbudget-attempts"]) == ("1", "1")
    served = list(
        UsageRecord.objects.order_by("created_at").values_list("deployment_id", flat=True)
    )
    assert served == [good.pk, good.pk, good.pk, first.pk, first.pk]
    assert_charged_once(world)
    key = "pool-refused@refusing/gpt-4o-mini"
    assert metric(world, "tokenbudget_deployment_breaker_open", deployment=key) == 0


def test_a_hanging_deployment_costs_its_timeout_until_its_breaker_opens(world: World) -> None:
    hanging = upstream(world, "hanging", read_timeout=1)
    pool(world, "pool-hang", (hanging, "mock-timeout"))
    good = deployment("pool-hang", "gpt-4o-mini")
    took = []
    for _ in range(4):
        _, seconds = call(world, "pool-hang")
        took.append(seconds)
    assert all(seconds < 8 for seconds in took), "every call within its deadline"
    assert took[0] >= 1 and took[1] >= 1  # waited for the hanging deployment's timeout
    assert took[2] < 0.9 and took[3] < 0.9  # then it rests
    assert set(UsageRecord.objects.values_list("deployment_id", flat=True)) == {good.pk}
    assert_charged_once(world)


def test_the_hold_covers_the_dearest_candidate_and_the_server_s_price_is_charged(
    world: World,
) -> None:
    # mock-error-500 is priced at $1/$2 per million, gpt-4o-mini at $0.15/$0.60.
    world.allowance.unit = "usd"
    world.allowance.amount = Decimal(10)
    world.allowance.save()
    bad = upstream(world, "dear")
    pool(world, "pool-price", (bad, "mock-error-500"))
    call(world, "pool-price")
    record = UsageRecord.objects.get()
    expected = (
        record.input_tokens * Decimal("0.15") + record.output_tokens * Decimal("0.60")
    ) / 1_000_000
    assert record.cost == expected
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert (allowance.used, allowance.reserved) == (expected, 0)


def test_fallback_models_serve_when_every_deployment_fails(world: World) -> None:
    bad = upstream(world, "broken")
    catalog_services.route_create(
        actor=None,
        data={
            "public_name": "primary",
            "upstream": bad,
            "upstream_model": "mock-error-500",
            "fallback_models": ["gpt-4o-mini"],
        },
    )
    headers, _ = call(world, "primary")
    assert headers["x-tokenbudget-attempts"] == "2"
    record = UsageRecord.objects.get()
    assert (record.model, record.upstream_model, record.attempts) == (
        "gpt-4o-mini",
        "gpt-4o-mini",
        2,
    )
    assert_charged_once(world)


def test_when_every_attempt_fails_the_last_answer_is_the_client_s_and_nothing_is_charged(
    world: World,
) -> None:
    bad = upstream(world, "down")
    ModelPrice.objects.create(
        model="mock-error-503",
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
        effective_from=timezone.now() - dt.timedelta(days=1),
        source="catalog",
    )
    catalog_services.route_create(
        actor=None,
        data={"public_name": "all-bad", "upstream": bad, "upstream_model": "mock-error-500"},
    )
    route = ModelRoute.objects.get(public_name="all-bad")
    catalog_services.route_deployments_set(
        actor=None,
        route=route,
        deployments=[
            {"upstream": bad, "upstream_model": "mock-error-500"},
            {"upstream": bad, "upstream_model": "mock-error-503"},
        ],
    )
    client = openai.OpenAI(base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="all-bad", messages=HELLO, max_tokens=10)
    assert failed.value.status_code in (500, 503)
    assert failed.value.response.headers["x-tokenbudget-attempts"] == "2"
    record = UsageRecord.objects.get()
    assert record.cost == 0 and record.attempts == 2
    assert Allowance.objects.get(pk=world.allowance.pk).used == 0


def test_with_redis_a_breaker_opened_by_one_process_rests_the_deployment_in_another(
    transactional_db,
    redis_server,  # noqa: F811 (the fixture imported above)
    mock_upstream_url: str,
) -> None:
    """Two proxy processes on one Redis: the first sees the failures and opens the breaker;
    the second, after one failure of its own (below the threshold), rests the deployment too."""
    from django.db import connection

    redis_server.client().flushdb()
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "REDIS_URL": redis_server.url,
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_upstream_url,
        "TB_SERVE_STATIC": "0",
        "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
        **BREAKER_ENV,
        "TB_BREAKER_COOLDOWN_SECONDS": "30",
    }
    ports = [servers.free_port(), servers.free_port()]
    processes = [servers.start_proxy(port, env) for port in ports]
    try:
        world = make_world(f"http://127.0.0.1:{ports[0]}", mock_upstream_url)
        bad = upstream(world, "shared-500")
        pool(world, "pool-shared", (bad, "mock-error-500"))
        first = [call(world, "pool-shared")[0]["x-tokenbudget-attempts"] for _ in range(3)]
        assert first == ["2", "2", "1"]
        assert redis_server.client().exists("tb:breaker:open:pool-shared@shared-500/mock-error-500")
        world.proxy = f"http://127.0.0.1:{ports[1]}"
        seen = [call(world, "pool-shared")[0]["x-tokenbudget-attempts"]]
        time.sleep(0.3)  # the background read of the shared breakers
        seen += [call(world, "pool-shared")[0]["x-tokenbudget-attempts"] for _ in range(2)]
        assert seen == ["2", "1", "1"]
    finally:
        for process in processes:
            servers.stop(process)


def test_with_redis_a_deployments_rpm_holds_for_all_processes_together(
    transactional_db,
    redis_server,  # noqa: F811 (the fixture imported above)
    mock_upstream_url: str,
) -> None:
    """A deployment allowed 3 requests a minute: after 3 calls through one proxy process, the
    other process sends the route's calls to the next deployment once it has read the shared
    count, though it sent none there itself."""
    from django.db import connection

    redis_server.client().flushdb()
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "REDIS_URL": redis_server.url,
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_upstream_url,
        "TB_SERVE_STATIC": "0",
        "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
        **BREAKER_ENV,
    }
    ports = [servers.free_port(), servers.free_port()]
    processes = [servers.start_proxy(port, env) for port in ports]
    try:
        world = make_world(f"http://127.0.0.1:{ports[0]}", mock_upstream_url)
        mock = Upstream.objects.get(name="mock-openai")
        route = catalog_services.route_create(
            actor=None,
            data={"public_name": "pool-rpm", "upstream": mock, "upstream_model": "gpt-4o-mini"},
        )
        catalog_services.route_deployments_set(
            actor=None,
            route=route,
            deployments=[
                {"upstream": mock, "upstream_model": "gpt-4o-mini", "priority": 0, "rpm": 3},
                {"upstream": mock, "upstream_model": "o4-mini-cached-reasoning", "priority": 1},
            ],
        )
        # The counts are per wall-clock minute: start early in one, so the calls share it.
        left = 60 - time.time() % 60
        if left < 20:
            time.sleep(left + 0.5)

        def served(proxy: str) -> str:
            client = openai.OpenAI(
                base_url=f"{proxy}/v1", api_key=world.key, max_retries=0, timeout=30
            )
            return client.chat.completions.create(
                model="pool-rpm", messages=HELLO, max_tokens=10
            ).model

        first, second = (f"http://127.0.0.1:{port}" for port in ports)
        assert [served(first) for _ in range(4)] == ["gpt-4o-mini"] * 3 + [
            "o4-mini-cached-reasoning"
        ]
        served(second)  # starts the second process's background read of the shared counts
        time.sleep(0.6)
        assert [served(second) for _ in range(2)] == ["o4-mini-cached-reasoning"] * 2
        minute = redis_server.client().hgetall(
            f"tb:deploy:minute:pool-rpm@mock-openai/gpt-4o-mini:{int(time.time() // 60)}"
        )
        assert int(minute[b"requests"]) in (3, 4)  # 4: the second process's first call
    finally:
        for process in processes:
            servers.stop(process)


def test_a_fallback_model_of_the_other_protocol_is_sent_in_its_own(world: World) -> None:
    """An OpenAI chat call whose route fails falls back to an Anthropic route: the request is
    translated for it, and the record is the Anthropic model's, at its price."""
    bad = upstream(world, "broken-x")
    catalog_services.route_create(
        actor=None,
        data={
            "public_name": "primary-x",
            "upstream": bad,
            "upstream_model": "mock-error-500",
            "fallback_models": ["claude-sonnet-4-5"],
        },
    )
    headers, _ = call(world, "primary-x")
    assert headers["x-tokenbudget-attempts"] == "2"
    record = UsageRecord.objects.get()
    assert (record.model, record.provider, record.upstream_model) == (
        "claude-sonnet-4-5",
        "anthropic",
        "claude-sonnet-4-5-cached",
    )
    last = httpx.get(f"{world.mock}/_mock/last", timeout=5).json()
    assert last["path"].endswith("/messages")
    assert_charged_once(world)
