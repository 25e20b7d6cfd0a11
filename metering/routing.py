"""Budget-aware routing: which model actually serves a call.

Two rules, both decided in the proxy with warm caches (no database round trip):

- **Aliases.** `auto:<intent>` goes to the model the value report currently recommends for the
  intent (`Intent.recommended_model`), else the intent's `default_model`, taking the first of
  them the caller may use. The call is tagged with the intent unless it names another.
- **Downgrades.** A policy may name a cheaper stand-in per model (`downgrade_models`) and a
  share of the allowance (`downgrade_at_percent`). Once the employee's consumption reaches that
  share, or when the requested model no longer fits the budget at all, the call is served by
  the stand-in instead of being refused. Consumption is measured where the call's own hold is
  taken, as a share of the grant (released plus adjustments, without a soft overage):
  `(grant - remaining before this hold) / grant`, so calls in flight count.

A downgrade keeps the hold already taken for the requested model when the stand-in's worst case
fits inside it (same prompt, same output limit, lower rates), so a downgraded call costs no
extra reservation; only a call the requested model could not reserve at all reserves again.
"""

from __future__ import annotations

from decimal import Decimal

from budgets import ledger
from metering import selectors
from metering.cache import INTENT_NAME_MAX_LENGTH, TTLCache, name_valid
from metering.quota.db import Hold

AUTO_PREFIX = "auto:"

# Intent name -> its alias candidates; cached like keys and routes (same lifetime bound).
intents: TTLCache[selectors.IntentRoute] = TTLCache(
    selectors.intent_route_load,
    name="intents",
    valid=lambda name: name_valid(name, max_length=INTENT_NAME_MAX_LENGTH),
)


def alias_intent(model: str) -> str | None:
    """The intent named by an `auto:<intent>` model, or None for a plain model name."""
    if model.startswith(AUTO_PREFIX):
        return model[len(AUTO_PREFIX) :].strip()
    return None


def consumed_share_reached(info: selectors.KeyInfo, hold: Hold) -> bool:
    """True when, as this hold was taken, the allowance's consumption (used plus other calls'
    holds) had reached the policy's downgrade share of the allowance (its grant, without a soft
    overage; a hold's `remaining` counts from the grant on both quota backends)."""
    percent = info.downgrade_at_percent
    limits = info.limits
    if percent is None or limits is None or limits.granted <= 0:
        return False
    if hold.allowance_id != limits.allowance_id:
        return False
    consumed = limits.granted - (hold.remaining + hold.amount)
    return consumed * 100 >= limits.granted * Decimal(percent)


def fits_in_hold(hold: Hold, estimate: ledger.CallEstimate) -> bool:
    """Whether `estimate`, capped at the hold's output limit, costs no more than what the hold
    reserved, in tokens and in money (the key cap counts tokens, cost-center caps money)."""
    output = min(estimate.max_output_tokens, hold.output_tokens)
    if estimate.prompt_tokens + output > hold.tokens:
        return False
    return estimate.cost(output) <= hold.cost
