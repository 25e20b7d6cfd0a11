"""Real servers for the end-to-end tests: the mock upstream and the ASGI proxy, both as
separate processes, the proxy on the test database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.balance import current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee, Policy
from metering.models import ModelPrice, ModelRoute, Upstream
from metering.services import key_create
from tests import servers
from tests.google_accounts import Account, rsa_pems, write_account

# Public model -> upstream model. The mock upstream reports cached input tokens for models whose
# name contains "cached" and reasoning tokens for "reasoning", so those routes exercise every
# token kind.
ROUTES = {
    "gpt-4o-mini": "gpt-4o-mini",
    "o4-mini": "o4-mini-cached-reasoning",
    "text-embedding-3-small": "text-embedding-3-small",
    "claude-sonnet-4-5": "claude-sonnet-4-5-cached",
    "mock-error-500": "mock-error-500",
    "mock-timeout": "mock-timeout",
    "mock-slow-stream": "mock-slow-stream",
}
# USD per million tokens of each upstream model: input, output, cached input, cache write.
PRICES = {
    "gpt-4o-mini": ("0.15", "0.60", "0.075", None),
    "o4-mini-cached-reasoning": ("1.10", "4.40", "0.275", None),
    "text-embedding-3-small": ("0.02", "0", None, None),
    "claude-sonnet-4-5-cached": ("3.00", "15.00", "0.30", "3.75"),
    "mock-error-500": ("1", "2", None, None),
    "mock-timeout": ("1", "2", None, None),
    "mock-slow-stream": ("1", "2", None, None),
}


PROVIDER_KEY = "sk-provider-test-0123456789"
AWS_ACCESS_KEY_ID = "AKIAPROXYTEST0000000"


@pytest.fixture(scope="session")
def mock_upstream_url() -> Iterator[str]:
    port = servers.free_port()
    process = servers.start_mock_upstream(port)
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


# Vertex AI upstreams: variables naming service-account key files (tests/google_accounts.py)
# whose tokens the mock issues; the last names a file that is not a key.
VERTEX_ACCOUNTS = {
    "TB_UPSTREAM_KEY_VERTEX_SA": ("vertex-proxy", 3600),
    # Tokens of 304 s: under the proxy's 5-minute margin 4 s after they are issued.
    "TB_UPSTREAM_KEY_VERTEX_SHORT": ("vertex-short", 304),
}
VERTEX_BAD_ENV = "TB_UPSTREAM_KEY_VERTEX_BAD"


@pytest.fixture(scope="session")
def vertex_accounts(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream_url: str
) -> dict[str, Account]:
    """The service accounts the proxy's Vertex upstreams use, registered with the mock."""
    directory = tmp_path_factory.mktemp("vertex")
    pems = rsa_pems()
    accounts = {}
    for env, (name, expires_in) in VERTEX_ACCOUNTS.items():
        account = write_account(directory, name, f"{mock_upstream_url}/token", pems)
        account.register(mock_upstream_url, expires_in)
        accounts[env] = account
    bad = directory / "not-a-key.json"
    bad.write_text('{"type": "service_account", "private_key": "not a key"}')
    accounts[VERTEX_BAD_ENV] = Account("", bad, "")
    return accounts


@pytest.fixture(scope="session")
def proxy_url(
    django_db_setup, django_db_blocker, mock_upstream_url: str, vertex_accounts: dict
) -> Iterator[str]:
    from django.db import connection

    port = servers.free_port()
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        # Each test recreates routes and keys: no caching across tests in this server.
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_upstream_url,
        "TB_SERVE_STATIC": "0",
        # The provider key the proxy must send upstream (never the client's own key).
        "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
        # Bedrock upstreams sign with the AWS credential chain: these, and no files or roles.
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": "test-secret-access-key",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Vertex AI upstreams: paths of service-account key files.
        **{env_name: str(account.path) for env_name, account in vertex_accounts.items()},
    }
    process = servers.start_proxy(port, env)
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


@dataclass
class World:
    employee: Employee
    allowance: Allowance
    key: str
    proxy: str
    mock: str


def make_world(
    proxy: str,
    mock: str,
    *,
    amount: int | str = 1_000_000,
    unit: str = "tokens",
    policy: dict | None = None,
) -> World:
    root = CostCenter.objects.create(code="acme", name="Acme")
    if policy is not None:
        Policy.objects.create(cost_center=root, **policy)
    employee = Employee.objects.create(
        employee_id="E1", email="e1@example.com", name="E One", cost_center=root
    )
    allowance = Allowance.objects.create(
        employee=employee,
        fiscal_year=current_fiscal_year(),
        unit=unit,
        amount=Decimal(amount),
        prorate=False,
    )
    openai_up = Upstream.objects.create(
        name="mock-openai",
        kind="openai",
        base_url=mock,
        read_timeout=Decimal(3),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )
    anthropic_up = Upstream.objects.create(
        name="mock-anthropic",
        kind="anthropic",
        base_url=mock,
        read_timeout=Decimal(3),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )
    for public, upstream_model in ROUTES.items():
        ModelRoute.objects.create(
            public_name=public,
            upstream=anthropic_up if public.startswith("claude") else openai_up,
            upstream_model=upstream_model,
            default_max_output_tokens=256,
        )
    start = timezone.now() - dt.timedelta(days=30)
    for model, (inp, out, cached, write) in PRICES.items():
        ModelPrice.objects.create(
            model=model,
            input_per_mtok=Decimal(inp),
            output_per_mtok=Decimal(out),
            cached_input_per_mtok=Decimal(cached) if cached else None,
            cache_write_per_mtok=Decimal(write) if write else None,
            effective_from=start,
            source="catalog",
        )
    _, raw = key_create(employee=employee, name="test", actor=None)
    return World(employee, allowance, raw, proxy, mock)


@pytest.fixture
def world(transactional_db, proxy_url: str, mock_upstream_url: str) -> World:
    return make_world(proxy_url, mock_upstream_url)
