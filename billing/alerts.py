"""Budget alerts and monthly personal statement emails.

An alert is a row keyed by (kind, subject, period, threshold); the unique constraint makes it
happen once per threshold per fiscal year however often the check runs. Sending happens after
the commit, in a task that marks the row notified.

Kinds: an employee crossing a policy threshold (% of the year's allowance); an employee whose
last-30-days pace runs the allowance out before the fiscal year ends; a cost center whose
spend reached its annual cap (its managers and finance are told).
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import AlertEvent, DailyUsage, PersonalStatementNotice
from billing.periods import last_complete_month, local_tz
from billing.personal import pacing_get, personal_statement_get
from budgets.balance import current_fiscal_year, quota_get
from budgets.fiscal import add_months
from budgets.formatting import Number, amount_text, tokens_text, usd_text
from budgets.mail import mail_send, page_url
from budgets.models import Allowance, CostCenter, CostCenterSpend, Employee, Policy
from budgets.roles import FINANCE_GROUP
from budgets.selectors import policy_resolve_many

logger = logging.getLogger(__name__)
DEFAULT_THRESHOLDS = (80, 100)


def _manager_emails() -> dict[int, list[str]]:
    rows = CostCenter.managers.through.objects.values_list("costcenter_id", "user__email")
    out: dict[int, list[str]] = {}
    for cc, email in rows:
        if email:
            out.setdefault(cc, []).append(email)
    return out


def _finance_emails() -> list[str]:
    users = get_user_model().objects.filter(groups__name=FINANCE_GROUP, is_active=True)
    return sorted({u.email for u in users if u.email})


def _of(used: Number, allowance: Number, unit: str) -> str:
    """'110 of 200 tokens' or '$110.00 of $200.00': never the ledger's ten decimal places."""
    if unit == "usd":
        return f"{usd_text(used)} of {usd_text(allowance)}"
    return f"{tokens_text(used)} of {tokens_text(allowance)} tokens"


def _create(**fields: object) -> AlertEvent | None:
    try:
        with transaction.atomic():
            return AlertEvent.objects.create(**fields)
    except IntegrityError:
        return None  # already raised for this threshold and period


def alerts_check(*, now: dt.datetime) -> list[int]:
    """Raise every alert due at `now` that was not raised before; returns new alert ids and
    enqueues their notification after the commit."""
    day = timezone.localtime(now, local_tz()).date()
    fiscal_year = current_fiscal_year(day)
    period = f"FY{fiscal_year}"
    done = set(
        AlertEvent.objects.filter(period=period).values_list("kind", "subject_key", "threshold")
    )
    policies = policy_resolve_many()
    managers = _manager_emails()
    created: list[AlertEvent] = []
    allowances = Allowance.objects.filter(fiscal_year=fiscal_year).select_related("employee")
    for allowance in allowances.iterator(chunk_size=500):
        employee = allowance.employee
        created += _employee_alerts(
            employee, day, period, policies.get(employee.cost_center_id), managers, done
        )
    created += _cap_alerts(fiscal_year, period, managers, done)
    ids = [a.pk for a in created]
    if ids:
        from billing.tasks import alert_notify_task

        for alert_id in ids:
            transaction.on_commit(partial(alert_notify_task.delay, alert_id))
    return ids


def _employee_alerts(
    employee: Employee,
    day: dt.date,
    period: str,
    policy: Policy | None,
    managers: dict[int, list[str]],
    done: set[tuple[str, str, int]],
) -> list[AlertEvent]:
    quota = quota_get(employee, day=day)
    if quota.allowance <= 0:
        return []
    subject = f"emp:{employee.pk}"
    recipients = [employee.email, *managers.get(employee.cost_center_id, [])]
    thresholds = (policy.alert_thresholds if policy else None) or DEFAULT_THRESHOLDS
    percent = quota.used * 100 / quota.allowance
    out = []
    for threshold in sorted({int(t) for t in thresholds}):
        if percent < threshold or (AlertEvent.Kind.THRESHOLD, subject, threshold) in done:
            continue
        message = (
            f"{employee.name or employee.employee_id} has used {threshold}% or more of the "
            f"{period} LLM allowance ({_of(quota.used, quota.allowance, quota.unit)})."
        )
        alert = _create(kind=AlertEvent.Kind.THRESHOLD, employee=employee,
                        cost_center_id=employee.cost_center_id, period=period,
                        threshold=threshold, subject_key=subject, message=message,
                        recipients=recipients)  # fmt: skip
        if alert:
            out.append(alert)
    if (AlertEvent.Kind.PACING, subject, 0) not in done and quota.remaining > 0:
        pacing = pacing_get(employee=employee, day=day, remaining=quota.remaining, unit=quota.unit)
        if pacing.run_out is not None and pacing.run_out < quota.period_end:
            message = (
                f"At the pace of the last 30 days ({amount_text(pacing.per_day, quota.unit)} a day), "
                f"{employee.name or employee.employee_id}'s allowance runs out around "
                f"{pacing.run_out}, before the period ends on {quota.period_end}."
            )
            alert = _create(kind=AlertEvent.Kind.PACING, employee=employee,
                            cost_center_id=employee.cost_center_id, period=period, threshold=0,
                            subject_key=subject, message=message,
                            recipients=recipients)  # fmt: skip
            if alert:
                out.append(alert)
    return out


def _cap_alerts(
    fiscal_year: int, period: str, managers: dict[int, list[str]], done: set
) -> list[AlertEvent]:
    out = []
    spends = CostCenterSpend.objects.filter(
        fiscal_year=fiscal_year, cost_center__annual_cap__isnull=False
    ).select_related("cost_center")
    finance = _finance_emails()
    for spend in spends:
        cc = spend.cost_center
        subject = f"cc:{cc.pk}"
        cap = cc.annual_cap  # never None here (filtered above)
        if (
            cap is None
            or spend.spent < cap
            or (AlertEvent.Kind.COST_CENTER_CAP, subject, 100) in done
        ):
            continue
        message = (
            f"Cost center {cc.code} ({cc.name}) has spent {usd_text(spend.spent)} of its "
            f"{usd_text(cc.annual_cap)} {period} cap."
        )
        alert = _create(kind=AlertEvent.Kind.COST_CENTER_CAP, cost_center=cc, period=period,
                        threshold=100, subject_key=subject, message=message,
                        recipients=sorted({*managers.get(cc.pk, []), *finance}))  # fmt: skip
        if alert:
            out.append(alert)
    return out


def _slack_post(text: str) -> None:
    url = settings.TB_ALERT_WEBHOOK_URL
    if not url:
        return
    timeout = httpx.Timeout(5.0, connect=3.0)
    response = httpx.post(url, json={"text": text}, timeout=timeout)
    response.raise_for_status()


def alert_notify(*, alert_id: int) -> bool:
    """Email the alert's recipients and post it to the chat webhook, once.

    Returns False if it was already sent. Raises httpx.HTTPError on a webhook failure so the
    task can retry; the row is marked only after both channels succeeded.
    """
    with transaction.atomic():
        alert = AlertEvent.objects.select_for_update().filter(pk=alert_id).first()
        if alert is None or alert.notified_at is not None:
            return False
        subject = f"[Tokenbudget] {alert.get_kind_display()}"
        if alert.recipients:
            link = (page_url("employee", alert.employee_id) if alert.employee_id
                    else page_url("cost-centers"))  # fmt: skip
            mail_send(subject=subject, text=alert.message, recipients=alert.recipients,
                      link=link, link_label="See the usage")  # fmt: skip
        _slack_post(f"{subject}: {alert.message}")
        alert.notified_at = timezone.now()
        alert.save(update_fields=["notified_at"])
    return True


def personal_statements_send_as_needed(*, now: dt.datetime) -> int:
    """Email each employee with usage last month their personal statement, once."""
    period = last_complete_month(now)
    end = add_months(period, 1)
    employees = Employee.objects.filter(
        Q(id__in=DailyUsage.objects.filter(day__gte=period, day__lt=end).values("employee"))
    ).exclude(id__in=PersonalStatementNotice.objects.filter(period=period).values("employee"))
    sent = 0
    for employee in employees.iterator(chunk_size=500):
        with transaction.atomic():
            try:
                with transaction.atomic():
                    PersonalStatementNotice.objects.create(employee=employee, period=period)
            except IntegrityError:
                continue
            st = personal_statement_get(employee=employee, period=period)
            models = (
                ", ".join(f"{m['model']} ({usd_text(m['cost'])})" for m in st.top_models) or "none"
            )
            body = (
                f"Your LLM usage in {st.period}: {st.requests:,} requests, "
                f"{tokens_text(st.total_tokens)} tokens, cost {usd_text(st.cost)}.\n"
                f"Top models: {models}.\n"
                f"Remaining allowance: {amount_text(st.remaining, st.allowance_unit)}."
                + (f"\nProjected run-out: {st.projected_run_out}." if st.projected_run_out else "")
            )
            mail_send(subject=f"[Tokenbudget] Your usage in {st.period}", text=body,
                      recipients=[employee.email], link=page_url("my-tokens"),
                      link_label="Open My tokens")  # fmt: skip
            sent += 1
    return sent
