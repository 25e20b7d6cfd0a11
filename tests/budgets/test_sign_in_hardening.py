"""Sign-in and transport hardening: repeated wrong passwords lock the account out of the page
login and /admin/ (the right password included) until the cool-off ends; minting API keys is
throttled; list endpoints cap `limit` and `offset`; the production configuration passes
`manage.py check --deploy`."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from typing import Any

import pytest
import time_machine
from axes.models import AccessAttempt
from django.conf import settings
from django.core.cache import cache
from django.test import Client
from rest_framework.throttling import ScopedRateThrottle

from metering.models import VirtualKey
from tests import servers
from tests.budgets.conftest import Cast

PASSWORD = "right-password-1"
NOW = dt.datetime(2026, 6, 15, 9, 0, tzinfo=dt.UTC)
LOGINS = {"pages": "/accounts/login/", "admin": "/admin/login/"}


@pytest.fixture
def staff(cast: Cast) -> Any:
    admin = cast.users["admin"]
    admin.set_password(PASSWORD)
    admin.save()
    return admin


def _sign_in(client: Client, where: str, password: str) -> Any:
    return client.post(
        LOGINS[where], {"username": "admin", "password": password, "next": "/admin/"}
    )


def _signed_in(client: Client) -> bool:
    """Read inside the frozen clock: the session expires two weeks after it."""
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("where", ["pages", "admin"])
def test_failed_sign_ins_lock_out_even_the_right_password(staff: Any, where: str) -> None:
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    with time_machine.travel(NOW, tick=False):
        for _ in range(limit - 1):
            assert _sign_in(client, where, "wrong").status_code == 200  # the form again
        locked = _sign_in(client, where, "wrong")
        assert locked.status_code == 429
        right = _sign_in(client, where, PASSWORD)
        assert right.status_code == 429
        assert "Too many failed sign-ins" in right.content.decode()
        assert not _signed_in(client)
    # Another address is not locked out by this one's failures.
    elsewhere = Client(REMOTE_ADDR="10.0.0.9")
    with time_machine.travel(NOW, tick=False):
        assert _sign_in(elsewhere, where, PASSWORD).status_code == 302
        assert _signed_in(elsewhere)
    # After the cool-off the right password works again, and a success clears the count.
    later = NOW + settings.AXES_COOLOFF_TIME + dt.timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        assert _sign_in(client, where, PASSWORD).status_code == 302
        assert _signed_in(client)
    assert not AccessAttempt.objects.filter(ip_address="127.0.0.1").exists()


def test_one_wrong_password_then_the_right_one_signs_in(staff: Any) -> None:
    client = Client()
    with time_machine.travel(NOW, tick=False):
        assert _sign_in(client, "pages", "wrong").status_code == 200
        assert _sign_in(client, "pages", PASSWORD).status_code == 302
        assert _signed_in(client)


def test_minting_keys_is_throttled(cast: Cast, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"key-create": "2/hour"})
    client = api("employee")
    url = "/api/v1/employees/E-100/keys/"
    with time_machine.travel(NOW, tick=False):
        made = [client.post(url, {"name": f"k{n}"}, format="json").status_code for n in range(3)]
        assert made == [201, 201, 429]
        assert client.get(url).status_code == 200  # reading is not throttled
    assert VirtualKey.objects.count() == 2
    with time_machine.travel(NOW + dt.timedelta(hours=1, seconds=1), tick=False):
        assert client.post(url, {"name": "k3"}, format="json").status_code == 201
    cache.clear()


@pytest.mark.parametrize(
    ("query", "results", "has_next"),
    [
        ("limit=2", 2, True),
        ("limit=1000000000", 3, False),  # cut to TB_API_MAX_LIMIT
        (f"limit={10**40}", 3, False),  # was a 500
        (f"offset={10**40}", 0, False),  # was a 500: an empty page
        ("limit=-5&offset=-1", 3, False),  # the default page
    ],
)
def test_list_limits_are_bounded(
    cast: Cast, api: Any, settings: Any, query: str, results: int, has_next: bool
) -> None:
    settings.TB_API_MAX_LIMIT = 3  # the cast has three employees: M-1, E-100, S-200
    response = api("admin").get(f"/api/v1/employees/?{query}")
    assert response.status_code == 200
    data = response.json()
    assert data["count"] == 3
    assert len(data["results"]) == results
    assert (data["next"] is not None) is has_next


def _production_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TB_")}
    return {
        **env,
        "PYTHONPATH": str(servers.ROOT),
        "TB_SECRET_KEY": secrets.token_urlsafe(50),
        "TB_DEBUG": "0",
        "TB_ALLOWED_HOSTS": "tokenbudget.example.com",
        "TB_CSRF_TRUSTED_ORIGINS": "https://tokenbudget.example.com",
        "TB_SECURE_COOKIES": "1",
        "TB_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "TB_SSL_REDIRECT": "1",
        "TB_HSTS_SECONDS": "31536000",
        "TB_HSTS_INCLUDE_SUBDOMAINS": "1",
        "TB_HSTS_PRELOAD": "1",
        "TB_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    }


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(servers.ROOT / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_in_the_production_configuration() -> None:
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=_production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_names_what_the_default_configuration_lacks() -> None:
    env = {k: v for k, v in _production_env().items() if k not in {"TB_SECURE_COOKIES"}}
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 1
    assert "security.W012" in result.stderr and "security.W016" in result.stderr


def test_a_bad_proxy_header_name_stops_the_process() -> None:
    env = {**_production_env(), "TB_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "TB_PROXY_SSL_HEADER must be a header name" in result.stderr


def test_production_cookies_are_secure_and_https_is_recognised() -> None:
    code = (
        "import django; django.setup();"
        "from django.conf import settings as s;"
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER,"
        " s.SECURE_HSTS_SECONDS)"
    )
    env = {**_production_env(), "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True True ('HTTP_X_FORWARDED_PROTO', 'https') 31536000"
