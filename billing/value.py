"""Value reports: what AI spend produced, by cost center, intent, model or employee.

Every report is three grouped aggregates, never a per-row loop: the daily rollup (requests,
tokens, cost by group x model), the outcomes (quantity and value by group x intent x kind) and,
for the energy figures only, the summed generation time of the usage records (by group x
model). The groups are then combined in Python, in exact Decimals.

Definitions (also in the API schema and the README):
- tokens: input + output tokens (cached input is part of input, reasoning part of output).
- cost: the exact cost of the calls, in the currency of the prices.
- outcomes: the quantity of every outcome recorded; accepted / rejected: of those kinds.
- acceptance rate: accepted / (accepted + rejected); empty when nothing was rated.
- value: the sum of outcome values, plus, for accepted outcomes without a value, quantity x the
  intent's expected value per accepted outcome.
- value per 1,000 tokens: value x 1000 / tokens. Cost per accepted outcome: cost / accepted.
  Return on spend: value / cost. Tokens per dollar: tokens / cost.
- energy (kWh): per model, input tokens / 1000 x Wh per 1k input + output tokens / 1000 x Wh
  per 1k output, from the model's price row in force at the end of the period; models without
  both coefficients are left out of every energy figure (`energy_tokens` says how many tokens
  the energy figures cover).
- generation time: the sum of the calls' latency (request received to last byte) of the
  covered models. Average power (W) = energy (Wh) x 3600 / generation seconds.
- tokens per kWh: covered tokens / kWh. Tokens per dollar per watt: covered tokens / covered
  cost / average power.

Ratios are rounded half-even to 6 decimal places, money figures to 10 (the cost resolution);
sums are exact.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, Sum, When

from billing.models import DailyUsage, Watermark, units_to_cost
from billing.periods import last_complete_month, local_tz
from budgets import roles
from budgets.fiscal import add_months
from budgets.formatting import label_text, percent_text, ratio_text, tokens_text, usd_text
from budgets.mail import mail_send, page_url
from budgets.models import CostCenter, Employee
from metering.models import Intent, ModelPrice, ModelRoute, Outcome, UsageRecord

DIMENSIONS = {
    "cost_center": "cost_center_id",
    "intent": "intent",
    "model": "model",
    "employee": "employee_id",
}
RATIO = Decimal("0.000001")
MONEY = Decimal("0.0000000001")
# Coefficients have 6 decimal places, so tokens x coefficient / 1000 is exact to 1e-9 Wh, and
# kWh to 1e-12: energy figures are quantized to that, so a stored report (which keeps energy
# as an integer count of 1e-9 Wh) prints exactly like a computed one.
WH = Decimal("1e-9")
KWH = Decimal("1e-12")
ACCEPTED, REJECTED = Outcome.ACCEPTED, Outcome.REJECTED


def _ratio(numerator: Decimal | int, denominator: Decimal | int, exp: Decimal = RATIO) -> Any:
    """numerator / denominator rounded half-even, or None when the denominator is zero."""
    if not denominator:
        return None
    with localcontext() as ctx:
        ctx.prec = 60  # enough digits that the single rounding below is the only one
        return (Decimal(numerator) / Decimal(denominator)).quantize(exp, ROUND_HALF_EVEN)


@dataclass
class Group:
    key: Any
    label: str = ""
    requests: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    outcomes: int = 0
    accepted: int = 0
    rejected: int = 0
    value: Decimal = Decimal(0)
    energy_wh: Decimal = Decimal(0)
    energy_tokens: int = 0
    energy_cost: Decimal = Decimal(0)
    generation_ms: int = 0
    models: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        kwh = (self.energy_wh / 1000).quantize(KWH)
        seconds = Decimal(self.generation_ms) / 1000
        covered = bool(self.energy_tokens and self.energy_wh and seconds)
        power = _ratio(self.energy_wh * 3600, seconds) if covered else None
        return {
            "key": self.label,
            "requests": self.requests,
            "tokens": self.tokens,
            "cost": str(self.cost),
            "outcomes": self.outcomes,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "acceptance_rate": _ratio(self.accepted, self.accepted + self.rejected),
            "value": str(self.value),
            "value_per_1k_tokens": _ratio(self.value * 1000, self.tokens, MONEY),
            "cost_per_accepted_outcome": _ratio(self.cost, self.accepted, MONEY),
            "return_on_spend": _ratio(self.value, self.cost),
            "tokens_per_dollar": _ratio(self.tokens, self.cost),
            "energy_kwh": str(kwh) if self.energy_tokens else None,
            "energy_tokens": self.energy_tokens,
            "generation_seconds": str(seconds) if self.energy_tokens else None,
            "average_power_w": power,
            "tokens_per_kwh": _ratio(self.energy_tokens, kwh),
            # tokens / cost / (Wh x 3600 / s), as one division so it is rounded once
            "tokens_per_dollar_per_watt": (
                _ratio(self.energy_tokens * seconds, self.energy_cost * self.energy_wh * 3600)
                if covered
                else None
            ),
        }


def _scoped(qs: QuerySet, user: Any, *, employee_field: str = "employee") -> QuerySet:
    """Rows the user may see: everything for admins and finance, else their managed subtree
    and their own (the same rule as the daily-usage API)."""
    if roles.sees_all(user):
        return qs
    condition = Q(cost_center_id__in=roles.managed_cost_center_ids(user))
    if (employee := roles.employee_of(user)) is not None:
        condition |= Q(**{employee_field: employee})
    return qs.filter(condition)


def energy_coefficients(*, models: set[str], at: dt.datetime) -> dict[str, tuple[Decimal, Decimal]]:
    """Wh per 1k input and output tokens per public model name, from the newest price row in
    force at `at` that carries both (looked up under the model's name or its route's upstream
    model name)."""
    upstream = dict(
        ModelRoute.objects.filter(public_name__in=models).values_list(
            "public_name", "upstream_model"
        )
    )
    names = models | set(upstream.values())
    rows = (
        ModelPrice.objects.filter(
            model__in=names,
            effective_from__lte=at,
            energy_wh_per_1k_input__isnull=False,
            energy_wh_per_1k_output__isnull=False,
        )
        .order_by("model", "-effective_from")
        .values_list("model", "energy_wh_per_1k_input", "energy_wh_per_1k_output")
    )
    newest: dict[str, tuple[Decimal, Decimal]] = {}
    for name, e_in, e_out in rows:
        if e_in is not None and e_out is not None:  # the query keeps only complete rows
            newest.setdefault(name, (e_in, e_out))
    found = {}
    for model in models:
        coefficient = newest.get(model) or newest.get(upstream.get(model, ""))
        if coefficient is not None:
            found[model] = coefficient
    return found


def _bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    tz = local_tz()
    return (
        dt.datetime.combine(start, dt.time(), tzinfo=tz),
        dt.datetime.combine(end, dt.time(), tzinfo=tz),
    )


def _usage(groups: dict[Any, Group], column: str, user: Any, start: dt.date, end: dt.date) -> Any:
    rows = (
        _scoped(DailyUsage.objects.filter(day__gte=start, day__lt=end), user)
        .order_by()
        .values(column, "model")
        .annotate(
            r=Sum("requests"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units")
        )
    )
    by_model: list[tuple[Any, str, int, int, Decimal]] = []
    for row in rows:
        group = groups.setdefault(row[column], Group(key=row[column]))
        cost = units_to_cost(row["c"])
        group.requests += row["r"]
        group.tokens += row["i"] + row["o"]
        group.cost += cost
        group.models.add(row["model"])
        by_model.append((row[column], row["model"], row["i"], row["o"], cost))
    return by_model


def _energy(
    groups: dict[Any, Group], by_model: list, column: str, user: Any, start: dt.date, end: dt.date
) -> None:
    since, until = _bounds(start, end)
    coefficients = energy_coefficients(models={m for _, m, *_ in by_model}, at=until)
    if not coefficients:
        return
    for key, model, input_tokens, output_tokens, cost in by_model:
        if model not in coefficients:
            continue
        e_in, e_out = coefficients[model]
        group = groups[key]
        group.energy_wh += (
            Decimal(input_tokens) * e_in / 1000 + Decimal(output_tokens) * e_out / 1000
        )
        group.energy_tokens += input_tokens + output_tokens
        group.energy_cost += cost
    latency = (
        _scoped(
            UsageRecord.objects.filter(
                created_at__gte=since, created_at__lt=until, model__in=list(coefficients)
            ),
            user,
        )
        .order_by()
        .values(column)
        .annotate(ms=Sum("latency_ms"))
    )
    for row in latency:
        if row[column] in groups:
            groups[row[column]].generation_ms += row["ms"] or 0


def _outcomes(groups: dict[Any, Group], column: str, user: Any, start: dt.date, end: dt.date):
    expected = dict(
        Intent.objects.filter(expected_value__isnull=False).values_list("name", "expected_value")
    )
    rows = (
        _scoped(Outcome.objects.filter(day__gte=start, day__lt=end), user)
        .order_by()
        .values(column, "intent", "kind")
        .annotate(
            q=Sum("quantity"),
            v=Sum("value_units"),
            unvalued=Sum(Case(When(value_units__isnull=True, then=F("quantity")), default=0)),
        )
    )
    for row in rows:
        group = groups.setdefault(row[column], Group(key=row[column]))
        group.outcomes += row["q"]
        group.value += units_to_cost(row["v"])
        if row["kind"] == ACCEPTED:
            group.accepted += row["q"]
            group.value += row["unvalued"] * expected.get(row["intent"], Decimal(0))
        elif row["kind"] == REJECTED:
            group.rejected += row["q"]


def _label(groups: dict[Any, Group], dimension: str) -> None:
    keys = [k for k in groups if k is not None]
    names: dict[Any, str] = {}
    if dimension == "cost_center":
        names = dict(CostCenter.objects.filter(pk__in=keys).values_list("pk", "code"))
    elif dimension == "employee":
        names = dict(Employee.objects.filter(pk__in=keys).values_list("pk", "employee_id"))
    for key, group in groups.items():
        group.label = names.get(key, key) if key not in (None, "") else ""


def report_order(groups: Any) -> list[Group]:
    """Rows as every report lists them: dearest first, then by key."""
    return sorted(groups, key=lambda g: (-g.cost, str(g.label)))


def value_groups(*, dimension: str, start: dt.date, end: dt.date, user: Any) -> list[Group]:
    """The summed figures behind `value_report`, one `Group` per key, in report order."""
    column = DIMENSIONS[dimension]
    groups: dict[Any, Group] = {}
    by_model = _usage(groups, column, user, start, end)
    _energy(groups, by_model, column, user, start, end)
    _outcomes(groups, column, user, start, end)
    _label(groups, dimension)
    return report_order(groups.values())


def value_report(
    *, dimension: str, start: dt.date, end: dt.date, user: Any
) -> list[dict[str, Any]]:
    """One row per group of `dimension` over the local days [start, end), within what `user`
    may see. An empty key collects outcomes without that attribute (e.g. intent-window
    outcomes have no model) and usage without an intent."""
    groups = value_groups(dimension=dimension, start=start, end=end, user=user)
    return [g.as_dict() for g in groups]


# --- model comparison -------------------------------------------------------------------------

Z95 = Decimal("1.959963984540054")  # two-sided 95 %: the 0.975 quantile of the normal law
MIN_RATED = 30  # below this many rated outcomes per model, no recommendation fires


def wilson_interval(successes: int, n: int, z: Decimal = Z95) -> tuple[Decimal, Decimal] | None:
    """Wilson score interval for a binomial proportion (Wilson 1927), 6 decimal places.

    Chosen over the normal (Wald) interval because it stays inside [0, 1] and keeps its
    coverage at small n and at rates near 0 or 1, which is where acceptance rates live."""
    if n <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 50
        p = Decimal(successes) / n
        z2 = z * z
        denominator = 1 + z2 / n
        centre = (p + z2 / (2 * n)) / denominator
        half = z * (p * (1 - p) / n + z2 / (4 * n * n)).sqrt() / denominator
        low, high = max(centre - half, Decimal(0)), min(centre + half, Decimal(1))
        return low.quantize(RATIO, ROUND_HALF_EVEN), high.quantize(RATIO, ROUND_HALF_EVEN)


@dataclass
class ModelStats:
    model: str
    requests: int = 0
    cost: Decimal = Decimal(0)
    accepted: int = 0
    rejected: int = 0

    @property
    def rated(self) -> int:
        return self.accepted + self.rejected

    @property
    def rate(self) -> Decimal | None:
        return _ratio(self.accepted, self.rated)

    @property
    def cost_per_accepted(self) -> Decimal | None:
        return _ratio(self.cost, self.accepted, MONEY)

    def as_dict(self) -> dict[str, Any]:
        interval = wilson_interval(self.accepted, self.rated)
        return {
            "model": self.model,
            "requests": self.requests,
            "cost": str(self.cost),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "acceptance_rate": self.rate,
            "acceptance_interval": list(interval) if interval else None,
            "cost_per_accepted_outcome": self.cost_per_accepted,
        }


def _recommend(
    models: list[ModelStats], days: int, min_rated: int, margin: Decimal
) -> list[dict[str, Any]]:
    """Switch from `current` to `cheaper` only when both have at least `min_rated` rated
    outcomes, `cheaper` costs less per accepted outcome, and the lower end of its 95 % Wilson
    interval is at least `current`'s observed acceptance rate minus `margin`: the cheaper model
    is then not worse with 97.5 % one-sided confidence. The saving is what the period's
    accepted outcomes of `current` would have cost less at `cheaper`'s cost per accepted
    outcome; monthly = that x 30 / days in the period."""
    found = []
    for current in models:
        best = None
        for cheaper in models:
            if cheaper is current or min(current.rated, cheaper.rated) < min_rated:
                continue
            # With accepted outcomes on both sides every figure below exists.
            now_cost, new_cost = current.cost_per_accepted, cheaper.cost_per_accepted
            interval = wilson_interval(cheaper.accepted, cheaper.rated)
            if now_cost is None or new_cost is None or interval is None or current.rate is None:
                continue
            if new_cost >= now_cost:
                continue
            if interval[0] < current.rate - margin:
                continue
            saving = current.accepted * (now_cost - new_cost)
            if best is None or saving > best[1]:
                best = (cheaper, saving)
        if best is not None:
            found.append(
                {
                    "from_model": current.model,
                    "to_model": best[0].model,
                    "saving": str(best[1]),
                    "monthly_saving": _ratio(best[1] * 30, days, MONEY),
                }
            )
    return found


def model_comparison(
    *,
    start: dt.date,
    end: dt.date,
    user: Any,
    min_rated: int = MIN_RATED,
    margin: Decimal = Decimal(0),
) -> list[dict[str, Any]]:
    """Per intent served by two or more models: each model's acceptance rate with its Wilson
    interval and cost per accepted outcome, and the switches worth making (see `_recommend`).
    Only outcomes recorded against a request id carry a model, so only they count here."""
    stats: dict[str, dict[str, ModelStats]] = defaultdict(dict)
    usage = (
        _scoped(DailyUsage.objects.filter(day__gte=start, day__lt=end).exclude(intent=""), user)
        .order_by()
        .values("intent", "model")
        .annotate(r=Sum("requests"), c=Sum("cost_units"))
    )
    for row in usage:
        stats[row["intent"]][row["model"]] = ModelStats(
            model=row["model"], requests=row["r"], cost=units_to_cost(row["c"])
        )
    outcomes = (
        _scoped(
            Outcome.objects.filter(day__gte=start, day__lt=end, kind__in=[ACCEPTED, REJECTED]), user
        )
        .exclude(model="")
        .order_by()
        .values("intent", "model", "kind")
        .annotate(q=Sum("quantity"))
    )
    for row in outcomes:
        model = stats[row["intent"]].get(row["model"])
        if model is None:
            continue  # outcomes on calls outside the period's usage: no cost to compare with
        if row["kind"] == ACCEPTED:
            model.accepted += row["q"]
        else:
            model.rejected += row["q"]
    days = (end - start).days
    report = []
    for intent in sorted(stats):
        models = sorted(stats[intent].values(), key=lambda m: m.model)
        if len(models) < 2:
            continue
        report.append(
            {
                "intent": intent,
                "models": [m.as_dict() for m in models],
                "recommendations": _recommend(models, days, min_rated, margin),
            }
        )
    return report


# --- the monthly value report by email ------------------------------------------------------

VALUE_MAIL_WATERMARK = "value_report_mail"


def _report_recipients() -> list[str]:
    users = get_user_model().objects.filter(
        Q(is_staff=True) | Q(groups__name__in=[roles.ADMIN_GROUP, roles.FINANCE_GROUP]),
        is_active=True,
    )
    return sorted({u.email for u in users if u.email})


def value_report_text(*, start: dt.date, end: dt.date, user: Any) -> str:
    """The report by cost center as plain text, one line per cost center."""
    lines = [f"Value per token, {start:%B %Y}, by cost center:", ""]
    for row in value_report(dimension="cost_center", start=start, end=end, user=user):
        ret, rate = row["return_on_spend"], row["acceptance_rate"]
        lines.append(
            f"{label_text(row['key'])}: {row['requests']:,} requests, "
            f"{tokens_text(row['tokens'])} tokens, cost {usd_text(row['cost'])}, "
            f"value {usd_text(row['value'])}, return per dollar "
            f"{ratio_text(ret) if ret is not None else '-'}, acceptance "
            f"{percent_text(rate) if rate is not None else '-'}"
        )
    return "\n".join(lines)


def value_reports_send_as_needed(*, now: dt.datetime) -> dt.date | None:
    """Email last month's value report to admins and finance once; returns the month sent.

    A catch-up: the watermark's `period` is the last month sent, advanced in the transaction
    that sends, under its row lock, so a re-run or a concurrent run sends nothing twice and a
    failed send is retried by the next run."""
    period = last_complete_month(now)
    with transaction.atomic():
        Watermark.objects.get_or_create(name=VALUE_MAIL_WATERMARK)
        mark = Watermark.objects.select_for_update().get(name=VALUE_MAIL_WATERMARK)
        if mark.period is not None and mark.period >= period:
            return None
        recipients = _report_recipients()
        if recipients:
            everyone = get_user_model()(is_staff=True)  # the report covers every cost center
            body = value_report_text(start=period, end=add_months(period, 1), user=everyone)
            mail_send(subject=f"[Tokenbudget] Value per token, {period:%B %Y}", text=body,
                      recipients=recipients, link=page_url("value") + f"?period={period:%Y-%m}",
                      link_label="Open the Value page")  # fmt: skip
        mark.period = period
        mark.save(update_fields=["period", "updated_at"])
    return period
