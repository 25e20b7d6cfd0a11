"""Who an SSO sign-in becomes (identity.services.sso_user_for): the link claim, just-in-time
users, roles from the group claim at each sign-in, and the refusals."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from budgets import roles
from budgets.models import AuditEvent, Employee
from identity.backends import password_allowed
from identity.services import SignInRefused, sso_user_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def mapping(settings: Any) -> None:
    settings.TB_OIDC_LINK_CLAIM = "email"
    settings.TB_OIDC_LINK_FIELD = "email"
    settings.TB_OIDC_GROUPS_CLAIM = "groups"
    settings.TB_OIDC_ADMIN_GROUPS = ["tb-admins"]
    settings.TB_OIDC_FINANCE_GROUPS = ["tb-finance"]
    settings.TB_OIDC_MANAGER_GROUPS = ["tb-managers"]


@pytest.fixture
def erin(org: Any) -> Employee:
    return Employee.objects.create(employee_id="E-1", email="erin@example.com", cost_center=org.eng)


def fresh(user: Any) -> Any:
    return get_user_model().objects.get(pk=user.pk)  # no cached role lookups


def test_first_sign_in_creates_and_links_the_user(erin: Employee) -> None:
    user = sso_user_for(claims={"email": "ERIN@example.com", "preferred_username": "erin"})
    erin.refresh_from_db()
    assert erin.user == user
    assert (user.username, user.email, user.has_usable_password()) == (
        "erin", "erin@example.com", False,
    )  # fmt: skip
    assert AuditEvent.objects.filter(source="sso", action="update", object_id=str(erin.pk))
    assert sso_user_for(claims={"email": "erin@example.com"}) == user  # the same user again


def test_link_by_hr_id(settings: Any, erin: Employee) -> None:
    settings.TB_OIDC_LINK_CLAIM = "employee_number"
    settings.TB_OIDC_LINK_FIELD = "employee_id"
    user = sso_user_for(claims={"employee_number": "E-1", "email": "other@example.com"})
    assert Employee.objects.get(user=user) == erin


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"email": "nobody@example.com"}, "no_employee"),
        ({"sub": "x"}, "no_claim"),
        ({"email": ["erin@example.com"]}, "no_claim"),
    ],
)
def test_refusals_write_nothing(erin: Employee, claims: dict, reason: str) -> None:
    with pytest.raises(SignInRefused) as refused:
        sso_user_for(claims=claims)
    assert refused.value.reason == reason
    assert not get_user_model().objects.exists()
    assert not AuditEvent.objects.exists()


def test_inactive_employee_is_refused(erin: Employee) -> None:
    erin.active = False
    erin.save()
    with pytest.raises(SignInRefused) as refused:
        sso_user_for(claims={"email": "erin@example.com"})
    assert refused.value.reason == "inactive"


def test_roles_follow_the_groups_at_each_sign_in(org: Any, erin: Employee) -> None:
    user = sso_user_for(claims={"email": "erin@example.com", "groups": ["tb-admins", "x"]})
    assert roles.is_admin(fresh(user)) and not roles.is_finance(fresh(user))
    user = sso_user_for(claims={"email": "erin@example.com", "groups": ["tb-finance"]})
    assert not roles.is_admin(fresh(user)) and roles.is_finance(fresh(user))
    user = sso_user_for(claims={"email": "erin@example.com", "groups": "tb-managers"})
    assert roles.managed_cost_center_ids(fresh(user)) == {org.eng.pk, org.eng_ml.pk}
    assert not roles.sees_all(fresh(user))
    user = sso_user_for(claims={"email": "erin@example.com", "groups": []})
    assert roles.managed_cost_center_ids(fresh(user)) == set()
    assert not roles.sees_all(fresh(user))
    assert AuditEvent.objects.filter(source="sso", object_type__icontains="cost").count() == 2


def test_an_empty_mapping_leaves_the_role_alone(settings: Any, erin: Employee) -> None:
    settings.TB_OIDC_FINANCE_GROUPS = []
    user = sso_user_for(claims={"email": "erin@example.com"})
    user.groups.add(Group.objects.get_or_create(name=roles.FINANCE_GROUP)[0])
    user = sso_user_for(claims={"email": "erin@example.com", "groups": []})
    assert roles.is_finance(fresh(user))


@pytest.mark.parametrize(
    ("enabled", "username", "allowed"),
    [(True, "anyone", True), (False, "anyone", False), (False, "root", True), (False, "", False)],
)
def test_password_sign_in_switch(
    settings: Any, enabled: bool, username: str, allowed: bool
) -> None:
    settings.TB_PASSWORD_SIGN_IN = enabled
    settings.TB_BREAK_GLASS_USERS = ["root"]
    assert password_allowed(username) is allowed


def test_break_glass_admin_signs_in_with_a_password(client: Any, settings: Any) -> None:
    settings.TB_PASSWORD_SIGN_IN = False
    settings.TB_BREAK_GLASS_USERS = ["root"]
    get_user_model().objects.create_user("root", password="pw-root-123", is_staff=True)
    get_user_model().objects.create_user("ann", password="pw-ann-123")
    refused = client.post("/accounts/login/", {"username": "ann", "password": "pw-ann-123"})
    assert refused.status_code == 200 and "_auth_user_id" not in client.session
    signed_in = client.post("/accounts/login/", {"username": "root", "password": "pw-root-123"})
    assert signed_in.status_code == 302 and "_auth_user_id" in client.session


def test_refusal_page_is_clear_not_a_500(client: Any) -> None:
    session = client.session
    session["identity_refusal"] = {"reason": "no_employee", "value": "zed@example.com"}
    session.save()
    page = client.get("/sso/refused/")
    assert page.status_code == 403
    assert b"no employee on the roster has this identity" in page.content


def test_sso_is_off_without_an_issuer(client: Any, settings: Any) -> None:
    settings.TB_OIDC_ISSUER = ""
    assert client.get("/oidc/authenticate/").status_code == 404
    assert b"sso-sign-in" not in client.get("/accounts/login/").content
