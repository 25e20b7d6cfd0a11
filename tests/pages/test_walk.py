"""Every page each role can reach, on the demo company, at a desk width and a phone width: a
full-page screenshot of each (artifacts/screenshots/<role>-<page>-<width>.png), axe-core with no
serious or critical violation, and no sideways scroll of the whole page on a phone.

PAGES is the one list to extend when a page is added: its path (with `{name}` placeholders for
the demo rows that `seed_demo` returns), the roles that open it, the status it answers and,
for a state reached on the page (a new key shown once, a roster preview), the steps to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.core.management import call_command

from billing.models import ChargebackStatement
from budgets.models import CostCenter, Employee, Policy
from metering.models import ModelRoute, Upstream
from tests.pages.conftest import PASSWORD, SCREENSHOTS

pytestmark = pytest.mark.e2e

# The demo company's logins (metering/management/commands/seed_demo.py): an admin, the manager
# of Engineering, a finance reader and an employee.
ROLES = {"admin": "admin", "manager": "grace", "finance": "frank", "employee": "ada"}
WIDTHS = {1440: {"width": 1440, "height": 900}, 390: {"width": 390, "height": 844}}
BLOCKING = {"serious", "critical"}


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    roles: tuple[str, ...]
    status: int = 200
    then: Callable[[Any], None] | None = None  # steps on the page that lead to the state shown


ROSTER = (
    "employee_id,email,name,cost_center,allowance\n"
    "E1001,ada@example.com,Ada Lovelace,eng-platform,2500000\n"
    "N-1,nora.new@example.com,Nora New,eng,\n"
)


def create_a_key(page: Any) -> None:
    page.get_by_label("New key name").fill("walk laptop")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_load_state()


def preview_a_roster(page: Any) -> None:
    page.set_input_files(
        "#roster-file",
        files=[{"name": "roster.csv", "mimeType": "text/csv", "buffer": ROSTER.encode()}],
    )
    page.get_by_role("button", name="Preview changes").click()
    page.wait_for_load_state()


EVERYONE = ("admin", "manager", "finance", "employee")
READERS = ("admin", "manager", "finance")
PAGES = [
    Page("home", "/", EVERYONE),
    Page("overview", "/manage/overview/", ("admin",)),
    Page("team", "/manage/team/", ("manager",)),
    Page("finance", "/finance/", ("admin", "finance")),
    Page("my-tokens", "/me/", ("manager", "finance", "employee")),
    Page("my-tokens-new-key", "/me/", ("employee",), then=create_a_key),
    Page("approvals", "/manage/requests/", READERS),
    Page("cost-centers", "/manage/cost-centers/", READERS),
    Page("employees", "/manage/employees/", READERS),
    Page("employee", "/manage/employees/{employee}/", READERS),
    Page("employee-new", "/manage/employees/new/", ("admin",)),
    Page("employee-deactivate", "/manage/employees/{employee}/deactivate/", ("admin",)),
    Page("cost-center-new", "/manage/cost-centers/new/", ("admin",)),
    Page("cost-center-edit", "/manage/cost-centers/{center}/", ("admin",)),
    Page("roster", "/manage/roster/", ("admin",)),
    Page("roster-preview", "/manage/roster/", ("admin",), then=preview_a_roster),
    Page("policies", "/manage/policies/", READERS),
    Page("policy-edit", "/manage/policies/{policy}/", ("admin",)),
    Page("models", "/manage/models/", ("admin",)),
    Page("route-new", "/manage/models/routes/new/", ("admin",)),
    Page("route-edit", "/manage/models/routes/{route}/", ("admin",)),
    Page("upstream-edit", "/manage/models/upstreams/{upstream}/", ("admin",)),
    Page("price-new", "/manage/models/prices/new/", ("admin",)),
    Page("value", "/value/", EVERYONE),
    Page("statements", "/finance/statements/", READERS),
    Page("statement", "/finance/statements/{statement}/", READERS),
    Page("forbidden", "/manage/roster/", ("employee",), status=403),
    Page("not-found", "/manage/employees/0/", ("admin",), status=404),
]


def seed_demo() -> dict[str, int]:
    """The demo company with two months of history, and the ids the page paths need."""
    call_command("seed_demo", "--password", PASSWORD, stdout=StringIO())
    call_command("seed_demo_history", "--months", "2", "--extra-employees", "6", stdout=StringIO())
    return {
        "employee": Employee.objects.get(employee_id="E1001").pk,  # Engineering: grace's team
        "policy": Policy.objects.get(cost_center__code="sales").cost_center_id,
        "center": CostCenter.objects.get(code="sales").pk,
        "route": ModelRoute.objects.order_by("pk").first().pk,
        "upstream": Upstream.objects.order_by("pk").first().pk,
        "statement": ChargebackStatement.objects.get(cost_center__code="eng", status="draft").pk,
    }


def sign_in_at(browser: Any, live_url: str, username: str, width: int) -> Any:
    context = browser.new_context(viewport=WIDTHS[width])
    page = context.new_page()
    page.goto(f"{live_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, f"{username} could not sign in"
    return context, page


def blocking_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings, one line each with the offending elements."""
    results = Axe().run(page)
    found = []
    for violation in results.response["violations"]:
        if violation["impact"] in BLOCKING:
            targets = ", ".join(str(node["target"]) for node in violation["nodes"][:5])
            found.append(
                f"{violation['impact']} {violation['id']}: {violation['help']} [{targets}]"
            )
    return found


def page_problems(page: Any, width: int) -> list[str]:
    """What keeps a page from being used: axe-core's serious and critical findings and, on a
    phone, a page wider than the screen."""
    problems = blocking_violations(page)
    if width == 390:
        scroll = page.evaluate("document.documentElement.scrollWidth")
        viewport = page.evaluate("window.innerWidth")
        if scroll > viewport:
            problems.append(f"scrolls sideways: {scroll} px wide in a {viewport} px screen")
    return problems


@pytest.mark.parametrize("role", list(ROLES))
def test_every_page_of_a_role_is_accessible_and_fits(
    transactional_db: None, browser: Any, live_url: str, role: str
) -> None:
    """One test per role (the demo is seeded once for all of its pages); every page is visited
    at both widths before the verdict, so one run lists every problem."""
    ids = seed_demo()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    for width in WIDTHS:
        context, page = sign_in_at(browser, live_url, ROLES[role], width)
        for spec in PAGES:
            if role not in spec.roles:
                continue
            name = f"{role}-{spec.name}-{width}"
            response = page.goto(live_url + spec.path.format(**ids))
            if spec.then is not None:
                spec.then(page)
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
            found = [] if response.status == spec.status else [f"HTTP {response.status}"]
            found += page_problems(page, width)
            if found:
                problems[name] = found
        context.close()
    assert not problems, "\n".join(f"{name}: {found}" for name, found in problems.items())


def test_sign_in_page_is_accessible(transactional_db: None, browser: Any, live_url: str) -> None:
    for width, viewport in WIDTHS.items():
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(f"{live_url}/accounts/login/")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"signed-out-sign-in-{width}.png"), full_page=True)
        assert page_problems(page, width) == []
        context.close()


def test_keyboard_skips_the_navigation_and_always_shows_the_focus(
    transactional_db: None, browser: Any, live_url: str
) -> None:
    seed_demo()
    context, page = sign_in_at(browser, live_url, ROLES["admin"], 390)
    page.goto(f"{live_url}/manage/policies/")
    page.keyboard.press("Tab")
    focused = page.evaluate("[document.activeElement.className, document.activeElement.text]")
    assert focused == ["skip-link", "Skip to content"]
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0  # on screen while focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # the first control of the page itself, past the navigation
    first = page.evaluate("document.activeElement.id")
    assert first == "pick-cost-center"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    context.close()


def test_revoke_stays_in_sight_on_a_phone(
    transactional_db: None, browser: Any, live_url: str
) -> None:
    """The keys table on an employee's page is wider than a phone and scrolls inside its card;
    the Revoke step, and the confirmation it opens, stay on screen without scrolling the table."""
    ids = seed_demo()
    context, page = sign_in_at(browser, live_url, ROLES["manager"], 390)
    page.goto(f"{live_url}/manage/employees/{ids['employee']}/")
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    on_top = "(el, [x, y]) => el.contains(document.elementFromPoint(x, y))"
    revoke = page.locator("details.confirm-step > summary", has_text="Revoke").first
    for control in (revoke, page.locator("details.confirm-step[open] button.danger").first):
        if control is not revoke:
            revoke.click()
        page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        box = control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        middle = [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
        assert control.evaluate(on_top, middle)  # not covered by the scrolled table
    context.close()
