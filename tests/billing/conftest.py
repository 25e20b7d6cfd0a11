"""Billing fixtures: personas, a month of usage, and a real localstripe server."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from billing.statements import statements_close_as_needed
from tests.billing.factories import CostCenterFactory, EmployeeFactory, UserFactory, usage
from tests.clock import local

UTC = dt.UTC


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real localstripe process on a free port, state kept out of /tmp/localstripe.pickle."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("localstripe")
    exe = Path(sys.executable).with_name("localstripe")
    proc = subprocess.Popen(
        [str(exe), "--port", str(port), "--from-scratch"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(workdir)},
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def stripe_settings(settings, localstripe_url: str):  # type: ignore[no-untyped-def]
    httpx.delete(f"{localstripe_url}/_config/data", timeout=5)
    settings.TB_STRIPE_SECRET_KEY = "sk_test_tokenbudget"
    settings.TB_STRIPE_API_BASE = localstripe_url
    settings.TB_STRIPE_LOCALSTRIPE = True
    settings.TB_STRIPE_WEBHOOK_SECRET = "whsec_test_secret"
    return settings


@pytest.fixture
def cast(db):  # type: ignore[no-untyped-def]
    """Personas: admin, finance, manager of `eng` (with child `eng-ml`), employee, outsider."""
    finance_group, _ = Group.objects.get_or_create(name="finance")
    admin = UserFactory(username="admin", is_staff=True)
    finance = UserFactory(username="finance")
    finance.groups.add(finance_group)
    manager = UserFactory(username="manager")
    employee_user = UserFactory(username="employee")
    outsider = UserFactory(username="outsider")
    eng = CostCenterFactory(code="eng", gl_code="6100")
    ml = CostCenterFactory(code="eng-ml", gl_code="6110", parent=eng)
    sales = CostCenterFactory(code="sales", gl_code="6200")
    eng.managers.add(manager)
    alice = EmployeeFactory(employee_id="E1", user=employee_user, cost_center=eng)
    bob = EmployeeFactory(employee_id="E2", cost_center=ml)
    carol = EmployeeFactory(employee_id="E3", cost_center=sales)
    return {
        "admin": admin, "finance": finance, "manager": manager, "employee": employee_user,
        "outsider": outsider, "eng": eng, "ml": ml, "sales": sales, "alice": alice,
        "bob": bob, "carol": carol,
    }  # fmt: skip


@pytest.fixture
def january(cast):  # type: ignore[no-untyped-def]
    """January 2026 usage for the cast, closed into draft statements."""
    at = local(2026, 1, 10, 12)
    usage(cast["alice"], at=at, cost="1.2345678901", model="gpt-a", intent="code")
    usage(cast["alice"], at=at, cost="0.5", model="gpt-b")
    usage(cast["bob"], at=at, cost="2", model="gpt-a", intent="chat")
    usage(cast["carol"], at=at, cost="3.3333333333", model="gpt-a")
    statements_close_as_needed(now=local(2026, 2, 1, 6))
    return cast


def client_for(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client
