"""End to end with a real Celery worker process on PostgreSQL and Redis.

The rollup, the month close, the Stripe sync (against localstripe) and the alerts each run in
the worker, twice, and the second run changes nothing. Without PostgreSQL or Redis the test is
skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import tasks
from billing.models import AlertEvent, ChargebackStatement, DailyUsage, StatementLine
from billing.statements import statement_finalize
from budgets.models import Allowance
from config.celery import app
from metering.models import UsageRecord
from tests.billing.factories import usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
REDIS_URL = os.environ.get("TB_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
AUTH = {"Authorization": "Bearer sk_test_tokenbudget"}


def _require(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}")
    pytest.skip(why)


def _redis_ok() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 30.0, nudge: Callable | None = None
) -> None:
    """Poll `check`; `nudge` re-sends a job (a rollup may lawfully wait for transactions of
    other sessions on a shared server to end before it folds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
        if nudge is not None and int(deadline - time.monotonic()) % 3 == 0:
            nudge()
    raise AssertionError(f"timed out waiting for {what}")


def _reset_connections() -> None:
    """Drop the app's cached connection and producer pools: an eager task run earlier in the
    session leaves a producer pool bound to the default (unset) broker."""
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def worker(tmp_path: Path, localstripe_url: str) -> Iterator[dict[str, str]]:
    if connection.vendor != "postgresql":
        # Not a missing service: this test belongs to the suite's PostgreSQL pass.
        pytest.skip("runs in the PostgreSQL pass (DATABASE_URL=postgres://...)")
    _require(_redis_ok(), f"Redis is not reachable at {REDIS_URL}")
    httpx.delete(f"{localstripe_url}/_config/data", timeout=5)
    queue = f"billing-e2e-{uuid.uuid4().hex[:8]}"
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.billing.worker_settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": REDIS_URL,
        "TB_TEST_QUEUE": queue,
        "TB_TEST_MAIL_DIR": str(mail_dir),
        "TB_STRIPE_SECRET_KEY": "sk_test_tokenbudget",
        "TB_STRIPE_API_BASE": localstripe_url,
    }
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.Popen(
        [str(celery), "-A", "config", "worker", "-P", "solo", "-Q", queue, "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    saved = {k: app.conf[k] for k in ("broker_url", "task_always_eager", "task_default_queue")}
    app.conf.update(broker_url=REDIS_URL, task_always_eager=False, task_default_queue=queue)
    _reset_connections()
    try:
        yield {"queue": queue, "mail_dir": str(mail_dir), "stripe": localstripe_url}
    finally:
        app.conf.update(saved)
        _reset_connections()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rollup_cost() -> Decimal:
    return Decimal(DailyUsage.objects.aggregate(t=Sum("cost_units"))["t"] or 0).scaleb(-10)


def _snapshot() -> list[tuple]:
    return list(DailyUsage.objects.order_by("id").values_list("id", "requests", "cost_units"))


def test_jobs_end_to_end_in_a_real_worker(worker, cast, settings) -> None:
    settings.TB_STRIPE_SECRET_KEY = "sk_test_tokenbudget"  # for the customer set-up below
    settings.TB_STRIPE_API_BASE = worker["stripe"]
    last_month = dt.datetime.now(dt.UTC).replace(day=1) - dt.timedelta(days=10)
    usage(cast["alice"], at=last_month, cost="1.2345678901", model="gpt-a")
    usage(cast["alice"], at=last_month, cost="0.5", model="gpt-b")
    usage(cast["bob"], at=last_month, cost="2", model="gpt-a")
    raw = sum((r.cost for r in UsageRecord.objects.all()), Decimal(0))

    # 1. Rollup, twice.
    tasks.daily_usage_rollup_task.delay()
    wait_until(
        lambda: _rollup_cost() == raw, "the rollup", nudge=tasks.daily_usage_rollup_task.delay
    )
    before = _snapshot()
    tasks.daily_usage_rollup_task.delay()
    tasks.statements_close_as_needed_task.delay()  # queued behind the second rollup
    wait_until(lambda: ChargebackStatement.objects.count() == 2, "the month close")
    assert _snapshot() == before

    # 2. Month close, twice.
    lines = list(StatementLine.objects.order_by("id").values_list("id", "cost_units"))
    tasks.statements_close_as_needed_task.delay()
    tasks.daily_usage_rollup_task.delay()  # a marker: when it ran, the close before it ran too
    time.sleep(1)
    wait_until(lambda: _snapshot() == before, "the second close")
    assert list(StatementLine.objects.order_by("id").values_list("id", "cost_units")) == lines

    # 3. Stripe sync on finalize (enqueued on commit), then a retried sync.
    from billing import stripe_api

    customer = stripe_api.customer_create(
        name="eng", metadata={}, idempotency_key=f"e2e-{worker['queue']}"
    ).id
    plan = {"id": "tb-zero", "amount": 0, "currency": "usd", "interval": "month",
            "product[name]": "zero"}  # fmt: skip
    httpx.post(f"{worker['stripe']}/v1/plans", data=plan, headers=AUTH)
    httpx.post(f"{worker['stripe']}/v1/subscriptions", headers=AUTH,
               data={"customer": customer, "items[0][plan]": "tb-zero"})  # fmt: skip
    cast["eng"].stripe_customer_id = customer
    cast["eng"].save()
    eng = ChargebackStatement.objects.get(cost_center=cast["eng"])
    statement_finalize(statement_id=eng.id)

    def synced() -> bool:
        eng.refresh_from_db()
        return bool(eng.stripe_invoice_id)

    wait_until(synced, "the Stripe sync")
    assert eng.status == "sent"
    tasks.statement_stripe_sync_task.delay(eng.id)
    tasks.statements_stripe_sync_pending_task.delay()
    time.sleep(2)
    invoices = httpx.get(
        f"{worker['stripe']}/v1/invoices", params={"customer": customer}, headers=AUTH
    ).json()["data"]
    ours = [i for i in invoices if "[tb-stmt-" in (i["description"] or "")]
    assert len(ours) == 1
    assert sorted(li["amount"] for li in ours[0]["lines"]["data"] if li["amount"]) == [50, 123]

    # 4. Alerts, twice: each threshold once, each mailed once.
    year = dt.datetime.now(dt.UTC).year
    Allowance.objects.create(
        employee=cast["alice"], fiscal_year=year, amount=Decimal(1000), prorate=False,
        used=Decimal(900),
    )  # fmt: skip
    tasks.alerts_check_task.delay()
    wait_until(
        lambda: (
            AlertEvent.objects.exists()
            and not AlertEvent.objects.filter(notified_at__isnull=True).exists()
        ),
        "the alert mails",
    )
    raised = sorted(AlertEvent.objects.values_list("kind", "threshold"))
    assert ("threshold", 80) in raised  # 90 % used; the default thresholds are 80 and 100
    tasks.alerts_check_task.delay()
    time.sleep(2)
    assert sorted(AlertEvent.objects.values_list("kind", "threshold")) == raised
    assert len(os.listdir(worker["mail_dir"])) == len(raised)
