"""Budget requests: an employee asks for more allowance, a manager or an admin decides.

Rules:
- Only the employee asks, for this fiscal year's allowance, a positive amount with a reason.
- Managers of any cost center above (or at) the employee's, and admins, decide; nobody decides
  their own request (a manager asking for themselves needs a manager further up or an admin).
- A request is decided once: the row is locked and must still be pending, so two approvers
  clicking at once produce one adjustment.
- An approval appends an `Adjustment` of kind `request` (the approved amount, which may be less
  than asked) with the approver as actor, in the same transaction as the decision.
- Notifications go by email after the commit: the approvers when a request is made, the
  employee when it is decided. A failed email never undoes the decision.
"""

from __future__ import annotations

import logging
import smtplib
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from budgets import roles
from budgets.audit import audit_record, snapshot
from budgets.balance import current_fiscal_year
from budgets.formatting import amount_text
from budgets.mail import mail_send, page_url
from budgets.models import Adjustment, Allowance, BudgetRequest, Employee
from budgets.selectors import cost_center_ancestor_ids
from budgets.services import adjustment_create, amount_check

logger = logging.getLogger(__name__)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def request_approver_emails(employee: Employee) -> list[str]:
    """Managers of the employee's cost center and every one above it (not the employee)."""
    ids = [employee.cost_center_id, *cost_center_ancestor_ids(employee.cost_center)]
    users = get_user_model().objects.filter(managed_cost_centers__in=ids).distinct()
    return sorted({u.email for u in users if u.email and u.pk != employee.user_id})


def budget_requests_visible(user: Any) -> QuerySet[BudgetRequest]:
    """Requests the user may read: their own, their managed subtree's, all for admins and
    finance."""
    qs = BudgetRequest.objects.select_related("employee", "allowance", "adjustment", "decided_by")
    if roles.sees_all(user):
        return qs
    condition = Q(employee__cost_center_id__in=roles.managed_cost_center_ids(user))
    if (employee := roles.employee_of(user)) is not None:
        condition |= Q(employee=employee)
    return qs.filter(condition)


def can_decide(user: Any, request: BudgetRequest) -> bool:
    if request.requested_by_id is not None and request.requested_by_id == user.pk:
        return False
    return roles.can_adjust_allowance(user, request.employee)


def _notify(subject: str, body: str, recipients: list[str], link: str, label: str) -> None:
    if not recipients:
        return
    try:
        mail_send(subject=subject, text=body, recipients=recipients, link=link, link_label=label)
    except (smtplib.SMTPException, OSError):
        # The decision stands; the request and its status stay visible in the API.
        logger.exception("budget request email to %s failed", recipients)


def budget_request_create(*, user: Any, amount: Decimal, reason: str) -> BudgetRequest:
    """The signed-in employee asks for `amount` more on this fiscal year's allowance."""
    employee = roles.employee_of(user)
    if employee is None or not employee.active:
        raise PermissionDenied("Only active employees ask for more allowance.")
    allowance = Allowance.objects.filter(
        employee=employee, fiscal_year=current_fiscal_year()
    ).first()
    if allowance is None:
        raise _invalid("amount", "You have no allowance this year to add to.")
    if amount <= 0:
        raise _invalid("amount", "Ask for a positive amount.")
    amount_check(amount, allowance.unit)
    if not reason.strip():
        raise _invalid("reason", "Say why.")
    with transaction.atomic():
        request = BudgetRequest.objects.create(
            employee=employee,
            allowance=allowance,
            amount=amount,
            reason=reason.strip(),
            requested_by=user,
        )
        audit_record(actor=user, action="create", obj=request, after=snapshot(request))
        recipients = request_approver_emails(employee)
        transaction.on_commit(
            lambda: _notify(
                f"[Tokenbudget] {employee.name or employee.email} asks for "
                f"{amount_text(amount, allowance.unit)}",
                f"Reason: {request.reason}\n\nApprove or decline request {request.pk}.",
                recipients,
                page_url("approvals"),
                "Review the request",
            )
        )
    return request


def budget_request_decide(
    *,
    actor: Any,
    request_id: int,
    approve: bool,
    amount: Decimal | None = None,
    note: str = "",
) -> BudgetRequest:
    """Approve (optionally a smaller or larger amount than asked) or decline, once."""
    with transaction.atomic():
        request = (
            BudgetRequest.objects.select_for_update()
            .select_related("employee", "allowance")
            .get(pk=request_id)
        )
        if not can_decide(actor, request):
            raise PermissionDenied("You may not decide this request.")
        if request.status != BudgetRequest.Status.PENDING:
            raise _invalid("status", f"Already {request.status}.")
        before = snapshot(request)
        if approve:
            granted = request.amount if amount is None else amount
            if granted <= 0:
                raise _invalid("amount", "Approve a positive amount, or decline.")
            request.adjustment = adjustment_create(
                actor=actor,
                allowance=request.allowance,
                kind=Adjustment.Kind.REQUEST,
                amount=granted,
                reason=f"Budget request {request.pk}: {request.reason}"[:500],
            )
        request.status = BudgetRequest.Status.APPROVED if approve else BudgetRequest.Status.DECLINED
        request.decided_by = actor
        request.decided_at = timezone.now()
        request.decision_note = note
        request.save()
        audit_record(
            actor=actor, action="decide", obj=request, before=before, after=snapshot(request)
        )
        granted_text = (
            f" ({amount_text(request.adjustment.amount, request.allowance.unit)})"
            if approve
            else ""
        )
        transaction.on_commit(
            lambda: _notify(
                f"[Tokenbudget] Your budget request was {request.status}{granted_text}",
                note or f"Request {request.pk}: {request.reason}",
                [request.employee.email],
                page_url("my-tokens"),
                "Open My tokens",
            )
        )
    return request
