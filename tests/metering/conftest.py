"""Metering tests reuse the budgets cast (personas and cost-center tree)."""

from tests.budgets.conftest import Cast, api, cast, client_for

__all__ = ["Cast", "api", "cast", "client_for"]
