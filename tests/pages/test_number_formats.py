"""Every page and every e-mail, rendered from the demo history, prints numbers for people: no
raw float, no scientific notation, no Decimal with its ledger places, no ungrouped big figure;
and the API docs' decimal examples are plausible machine values, not pattern noise."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from html.parser import HTMLParser
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.test import Client

from billing.alerts import alert_notify, alerts_check, personal_statements_send_as_needed
from billing.models import AlertEvent, ChargebackStatement
from billing.rollup import local_tz
from billing.value import value_reports_send_as_needed
from budgets.models import Employee, Policy
from budgets.requests import budget_request_create, budget_request_decide
from metering.models import ModelRoute, Upstream

# A raw float or an unquantized Decimal (5+ places, or 3+ trailing zeros after the point), an
# exponent, and a figure of five or more digits with no thousands separator.
RAW_DECIMAL = re.compile(r"\d\.0*[1-9]\d{3,}|\d\.\d*000\b")
EXPONENT = re.compile(r"\b\d+(?:\.\d+)?[eE][+-]?\d+\b")
UNGROUPED = re.compile(r"(?<![\w.,:/-])\d{5,}(?![\w,/-])")
SKIPPED_TAGS = {"script", "style", "svg", "code", "pre", "textarea", "option", "title"}


class _Text(HTMLParser):
    """The text a person reads: outside scripts, styles, SVG markup, code and form values."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED_TAGS:
            self.depth += 1
        for name, value in attrs:  # hover titles are read by people too
            if name == "title" and value and not self.depth:
                self.parts.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts.append(data)


def readable_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return "\n".join(parser.parts)


def problems(where: str, text: str) -> list[str]:
    found = []
    for name, pattern in (("raw decimal", RAW_DECIMAL), ("exponent", EXPONENT),
                          ("ungrouped", UNGROUPED)):  # fmt: skip
        found += [f"{where}: {name} {m.group()!r} in {text[max(m.start() - 40, 0):m.end() + 20]!r}"
                  for m in pattern.finditer(text)]  # fmt: skip
    return found


def test_readable_text_skips_markup_and_keeps_titles() -> None:
    text = readable_text('<p>1.5k <abbr title="1,500">x</abbr></p><svg><text>12.5</text></svg>')
    assert "1.5k" in text and "1,500" in text and "12.5" not in text
    assert problems("t", "1374769.0000000000 of 2000000") and problems("t", "8.748E+5")
    assert problems("t", "ratio 0.829694") and not problems("t", "1,374,769 of $12.50, FY2026")


def _page_urls() -> dict[str, list[str]]:
    employee = Employee.objects.order_by("pk").first()
    statement = ChargebackStatement.objects.order_by("-period").first()
    policy = Policy.objects.order_by("pk").first()
    assert employee and statement and policy
    value = [f"/value/?dimension={d}" for d in ("cost_center", "employee", "model", "intent")]
    admin = [
        "/", "/manage/cost-centers/", "/manage/employees/", f"/manage/employees/{employee.pk}/",
        "/manage/roster/", "/manage/policies/", f"/manage/policies/{policy.cost_center_id}/",
        "/manage/models/", "/manage/models/routes/new/", "/manage/models/prices/new/",
        f"/manage/models/routes/{ModelRoute.objects.order_by('pk').first().pk}/",  # type: ignore[union-attr]
        f"/manage/models/upstreams/{Upstream.objects.order_by('pk').first().pk}/",  # type: ignore[union-attr]
        "/manage/requests/", "/finance/statements/", f"/finance/statements/{statement.pk}/",
        "/manage/overview/", "/finance/", *value,
    ]  # fmt: skip
    return {
        "admin": admin,
        "grace": ["/", "/me/", "/manage/requests/", "/manage/employees/", "/manage/cost-centers/",
                  "/manage/team/", f"/manage/employees/{employee.pk}/"],
        "frank": ["/", "/me/", "/finance/", "/finance/statements/", f"/finance/statements/{statement.pk}/",
                  *value],
        "ada": ["/", "/me/"],
    }  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_every_page_and_mail_prints_numbers_for_people() -> None:
    now = dt.datetime(2027, 3, 17, 9, 0, tzinfo=local_tz())
    found: list[str] = []
    with time_machine.travel(now, tick=False):
        call_command(
            "seed_demo_history", "--months", "2", "--extra-employees", "6", stdout=StringIO()
        )
        users = get_user_model().objects
        for username, urls in _page_urls().items():
            client = Client()
            client.force_login(users.get(username=username))
            for url in urls:
                response = client.get(url, follow=True)
                assert response.status_code == 200, (username, url)
                found += problems(f"{username} {url}", readable_text(response.content.decode()))

        mail.outbox.clear()
        alerts_check(now=now)
        for alert_id in AlertEvent.objects.values_list("pk", flat=True):
            alert_notify(alert_id=alert_id)
        personal_statements_send_as_needed(now=now)
        value_reports_send_as_needed(now=now)
        ada, grace = users.get(username="ada"), users.get(username="grace")
        request = budget_request_create(user=ada, amount=Decimal("125000"), reason="launch")
        budget_request_decide(actor=grace, request_id=request.pk, approve=True)
    kinds = {m.subject.split("]")[1].split()[0] for m in mail.outbox}
    assert len(mail.outbox) >= 5 and {"Your", "Value"} <= kinds
    for message in mail.outbox:
        found += problems(f"mail {message.subject!r}", message.subject + "\n" + message.body)
        [(html, kind)] = message.alternatives
        assert kind == "text/html" and 'href="http' in html
        found += problems(f"mail html {message.subject!r}", readable_text(html))
    assert found == [], "\n".join(found)


def test_api_docs_decimal_examples_are_plausible() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    examples: dict[str, str] = {}

    def walk(node: object, name: str = "") -> None:
        if isinstance(node, dict):
            if node.get("format") == "decimal":
                examples[name] = node.get("example", "")
                assert re.fullmatch(node.get("pattern", ".*"), examples[name]), name
            for key, child in node.items():
                walk(child, key)
        elif isinstance(node, list):
            for child in node:
                walk(child, name)

    walk(schema)
    assert examples and all(examples.values())
    assert examples["released"] == "250000" and examples["acceptance_rate"] == "0.83"
    assert not [v for v in examples.values() if EXPONENT.search(v) or len(v) > 12]
