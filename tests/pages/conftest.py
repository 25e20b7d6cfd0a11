"""Browser tests: Debian's Chromium driven by Playwright against the real ASGI server (pages and
proxy in one process) and the mock upstream, both on the test database.

Chromium comes from apt (scripts/install-browser.sh); Playwright's own browser download is
never used. Screenshots of every page land in artifacts/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from budgets.balance import current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee, Policy
from metering.models import ModelPrice, ModelRoute, Upstream
from tests import servers

CHROMIUM = os.environ.get("TB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = servers.ROOT / "artifacts" / "screenshots"
PASSWORD = "pages-test-password-1"
PROVIDER_KEY = "sk-provider-pages-0123456789"


def chromium_missing() -> bool:
    return shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists()


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Without Chromium the browser tests are skipped on a developer's machine; under CI (the
    `CI` variable set) they are left in, so the `browser` fixture fails them: a CI run must not
    pass green with its browser tests unrun."""
    if not chromium_missing() or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (scripts/install-browser.sh)")
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _orm_beside_playwright(request: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Playwright's sync API keeps an event loop in this thread, which makes Django refuse ORM
    calls as if they came from async code; the ORM calls of the browser tests between browser
    steps are ordinary synchronous code. Only the tests that use the browser get the waiver."""
    if "browser" in request.fixturenames:
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def mock_url() -> Iterator[str]:
    port = servers.free_port()
    process = servers.start_mock_upstream(port)
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


@pytest.fixture(scope="session")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live server's mail, one file per message (Django's file backend)."""
    return tmp_path_factory.mktemp("outbox")


@pytest.fixture(scope="session")
def live_url(
    django_db_setup: None, django_db_blocker: Any, mock_url: str, outbox: Path
) -> Iterator[str]:
    from django.db import connection

    # pytest-django creates the test database only when a collected test asks for the
    # database; without one the server would open the development database instead.
    if connection.settings_dict["NAME"] != connection.settings_dict["TEST"]["NAME"]:
        pytest.fail("the live server needs a test that uses the database (transactional_db)")
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_url,
        "TB_SERVE_STATIC": "1",
        "TB_PUBLIC_BASE_URL": url,
        "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
        "TB_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "TB_EMAIL_FILE_PATH": str(outbox),
    }
    process = servers.start_proxy(port, env)
    yield url
    servers.stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope: Playwright's event loop lives only while a browser module runs, so the
    # ORM is not refused in the modules that follow.
    from playwright.sync_api import sync_playwright

    if chromium_missing():
        pytest.fail(f"no Chromium at {CHROMIUM} under CI (scripts/install-browser.sh)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """One signed-in browser page with helpers for the steps every journey repeats."""

    def __init__(self, browser: Any, base: str, username: str) -> None:
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.base = base
        self.page.goto(f"{base}/accounts/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state()

    def goto(self, path: str) -> Any:
        return self.page.goto(f"{self.base}{path}")

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@dataclass
class Cast:
    users: dict[str, Any]
    acme: CostCenter
    eng: CostCenter
    eng_ml: CostCenter
    sales: CostCenter
    employee: Employee
    other: Employee
    allowance: Allowance


@pytest.fixture
def cast(transactional_db: None, mock_url: str) -> Cast:
    """acme > eng (managed by `manager`) > eng-ml (`employee`), acme > sales (`other`); admin,
    finance; routes to the mock upstream with prices."""
    users_model = get_user_model()
    users = {
        name: users_model.objects.create_user(
            name, f"{name}@example.com", PASSWORD, is_staff=(name == "admin")
        )
        for name in ("admin", "finance", "manager", "employee", "other", "outsider")
    }
    users["finance"].groups.add(Group.objects.get_or_create(name="finance")[0])
    acme = CostCenter.objects.create(code="acme", name="Acme", gl_code="6000")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme, gl_code="6100")
    eng_ml = CostCenter.objects.create(code="eng-ml", name="Machine learning", parent=eng)
    sales = CostCenter.objects.create(code="sales", name="Sales", parent=acme, gl_code="6200")
    eng.managers.add(users["manager"])
    Policy.objects.create(cost_center=acme, default_allowance=Decimal(500_000))
    employee = Employee.objects.create(
        employee_id="E-100", email="employee@example.com", name="Erin Employee",
        cost_center=eng_ml, user=users["employee"],
    )  # fmt: skip
    other = Employee.objects.create(
        employee_id="S-200", email="other@example.com", name="Sam Sales",
        cost_center=sales, user=users["other"],
    )  # fmt: skip
    year = current_fiscal_year()
    allowance = Allowance.objects.create(
        employee=employee, fiscal_year=year, amount=Decimal(1_000_000), prorate=False
    )
    Allowance.objects.create(
        employee=other, fiscal_year=year, amount=Decimal(300_000), prorate=False
    )
    upstream = Upstream.objects.create(
        name="mock-openai", kind="openai", base_url=mock_url, read_timeout=Decimal(5),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )  # fmt: skip
    ModelRoute.objects.create(
        public_name="gpt-4o-mini", upstream=upstream, upstream_model="gpt-4o-mini",
        default_max_output_tokens=256,
    )  # fmt: skip
    ModelPrice.objects.create(
        model="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"),
        effective_from=timezone.now() - dt.timedelta(days=400), source="catalog",
    )  # fmt: skip
    return Cast(users, acme, eng, eng_ml, sales, employee, other, allowance)


@pytest.fixture
def sign_in(browser: Any, live_url: str) -> Iterator[Any]:
    sessions: list[Session] = []

    def open_session(username: str) -> Session:
        session = Session(browser, live_url, username)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.close()
