"""OIDC sign-in in a browser: Debian's Chromium (Playwright) against the real ASGI server, signing
in through a real OIDC provider the test starts (the npm package oauth2-mock-server, installed
by scripts/install-identity.sh), with PKCE, roles from the group claim, and the IdP sign-out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from budgets.models import CostCenter, Employee
from tests import servers
from tests.pages.conftest import CHROMIUM, CHROMIUM_ARGS

IDP = servers.ROOT / "tests" / "identity" / "idp"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        NODE is None or not (IDP / "node_modules" / "oauth2-mock-server").is_dir(),
        reason="no Node or no oauth2-mock-server (scripts/install-identity.sh)",
    ),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM} (scripts/install-browser.sh)",
    ),
]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    claims = tmp_path_factory.mktemp("idp") / "claims.json"
    claims.write_text("{}")
    port = servers.free_port()
    process = servers.start([str(NODE), str(IDP / "server.mjs"), str(port), str(claims)], port)
    yield f"http://127.0.0.1:{port}", claims
    servers.stop(process)


@pytest.fixture(scope="module")
def site(django_db_setup: None, django_db_blocker: Any, idp: tuple[str, Path]) -> Iterator[str]:
    from django.db import connection

    port = servers.free_port()
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "TB_OIDC_ISSUER": idp[0],
        "TB_OIDC_CLIENT_ID": "tokenbudget",
        "TB_OIDC_CLIENT_SECRET": "idp-test-secret",
        "TB_OIDC_ADMIN_GROUPS": "tb-admins",
        "TB_OIDC_FINANCE_GROUPS": "tb-finance",
        "TB_OIDC_MANAGER_GROUPS": "tb-managers",
        "TB_PASSWORD_SIGN_IN": "0",
    }
    process = servers.start_proxy(port, env)
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def people(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Employee]:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM between Playwright steps
    acme = CostCenter.objects.create(code="acme", name="Acme")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme)
    CostCenter.objects.create(code="eng-ml", name="Machine learning", parent=eng)
    CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    return {
        name: Employee.objects.create(
            employee_id=f"E-{n}", email=f"{name}@example.com", name=name.title(), cost_center=eng
        )
        for n, name in enumerate(("erin", "mia", "ada"))
    }


def sign_in(browser: Any, site: str, idp: tuple[str, Path], claims: dict[str, Any]) -> Any:
    idp[1].write_text(json.dumps(claims))  # whom the provider signs in next
    page = browser.new_context().new_page()
    page.goto(f"{site}/accounts/login/")
    page.click("#sso-sign-in")
    page.wait_for_load_state()
    return page


def sign_out(page: Any, site: str, idp: tuple[str, Path]) -> None:
    log = Path(f"{idp[1]}.log")
    before = log.read_text().count("endsession") if log.exists() else 0
    page.click("form.signout button")
    page.wait_for_url(f"{site}/accounts/login/")
    assert log.read_text().count("endsession") == before + 1  # the IdP session ended too
    page.goto(f"{site}/me/")
    assert page.url.startswith(f"{site}/accounts/login/")  # and the local one
    page.context.close()


def test_each_role_lands_on_its_page_and_signs_out(
    chromium: Any, site: str, idp: tuple[str, Path], people: dict[str, Employee]
) -> None:
    page = sign_in(chromium, site, idp, {"sub": "u-erin", "email": "Erin@example.com"})
    assert page.url == f"{site}/me/"
    erin = Employee.objects.select_related("user").get(employee_id="E-0")
    assert erin.user is not None and not erin.user.has_usable_password()  # created just in time
    sign_out(page, site, idp)

    page = sign_in(chromium, site, idp, {"sub": "u-ada", "email": "ada@example.com",
                                         "groups": ["tb-admins"]})  # fmt: skip
    assert page.url == f"{site}/manage/overview/"
    sign_out(page, site, idp)

    page = sign_in(chromium, site, idp, {"sub": "u-mia", "email": "mia@example.com",
                                         "groups": ["tb-managers"]})  # fmt: skip
    assert page.url == f"{site}/manage/team/"  # a manager lands on the team, not their own tokens
    page.goto(f"{site}/manage/cost-centers/")
    text = page.inner_text("main")
    assert "Engineering" in text and "Machine learning" in text and "Sales" not in text
    sign_out(page, site, idp)

    # Erin's groups changed at the IdP: the new role holds from the next sign-in.
    page = sign_in(chromium, site, idp, {"sub": "u-erin", "email": "erin@example.com",
                                         "groups": ["tb-finance"]})  # fmt: skip
    assert page.url == f"{site}/finance/"
    sign_out(page, site, idp)
    page = sign_in(chromium, site, idp, {"sub": "u-erin", "email": "erin@example.com"})
    assert page.url == f"{site}/me/"
    assert not get_user_model().objects.get(pk=erin.user_id).groups.filter(name="finance")
    sign_out(page, site, idp)


def test_no_employee_gets_a_clear_page(
    chromium: Any, site: str, idp: tuple[str, Path], people: dict[str, Employee]
) -> None:
    page = sign_in(chromium, site, idp, {"sub": "u-zed", "email": "zed@example.com"})
    assert page.url == f"{site}/sso/refused/"
    assert "no employee on the roster has this identity" in page.inner_text("#sign-in-refused")
    assert "zed@example.com" in page.inner_text("#sign-in-refused")
    assert not get_user_model().objects.filter(email="zed@example.com").exists()
    page.context.close()


def test_password_sign_in_is_off_but_for_break_glass(
    chromium: Any, site: str, people: dict[str, Employee]
) -> None:
    get_user_model().objects.create_user("someone", password="pw-someone-1")
    page = chromium.new_context().new_page()
    page.goto(f"{site}/accounts/login/")
    assert "only for the break-glass administrator" in page.inner_text("main")
    page.fill("#id_username", "someone")
    page.fill("#id_password", "pw-someone-1")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url.startswith(f"{site}/accounts/login/")  # refused: not a break-glass admin
    page.context.close()
