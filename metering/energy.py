"""Default energy coefficients for priced models, from EcoLogits' bundled data and method.

EcoLogits (GenAI Impact, https://ecologits.ai, MPL-2.0) ships a repository of models (total and
active parameter counts, published tokens per second and time to first token where known) and
a published method for the energy of one generation request; both are read from the installed
package, never from the network, so the defaults are reproducible and change only when the
pinned package is upgraded.

The method (EcoLogits "LLM inference" methodology, as implemented in
`ecologits.impacts.llm`), for a request that generates n output tokens:

    E(n) = PUE x (G x n x e_gpu + latency(n) / 3600 x 1.2 kW x G / 8 / 64)      [kWh]
    e_gpu = (a x exp(b x 64) x P_active + c) / 1000   (kWh per token per GPU, regression)
    latency(n) = n / tokens_per_second + ttft          (or a regression on P_active)
    G = GPUs needed to hold P_total at 16 bits on 80 GB GPUs (rounded up to a power of two)

with a batch of 64 requests per server of 8 GPUs drawing 1.2 kW besides the GPUs, and the
provider's data-centre PUE. E is linear in n plus a per-request constant (the time to first
token). The coefficients stored on a price row are derived from it as follows:

- Wh per 1,000 output tokens = (E(1000) - E(0)) x 1000: the marginal energy of 1,000 output
  tokens. No measured latency is given (EcoLogits then uses its own latency estimate and never
  caps it), and the per-request constant is left out, because the coefficient is per token.
- Where EcoLogits gives a range (parameter counts of unreleased architectures, a provider's
  PUE range), the midpoint of its low and high ends is stored; the ends go to the audit event.
- Wh per 1,000 input tokens = 0: the methodology has no input-token (prefill) term, so there is
  no published figure to store. A 0 lets the model's output energy count in the value report
  (which needs both coefficients); an admin with a measured figure sets it, and this sync never
  overwrites a set value.
- Values are rounded half-even to 6 decimal places (the price row's precision).

Which models: every model name with price rows, none of which carries an energy coefficient
yet, looked up in EcoLogits under the price row's provider (genai-prices ids map to EcoLogits
provider names below), or, for rows without a known provider, under the one EcoLogits provider
that knows the name (a name known to several is left alone). All of that model's price rows
get the pair; each row's change is audited with the source ("EcoLogits <version>").
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q

from budgets.audit import audit_record, snapshot
from metering.models import ModelPrice

PLACES = Decimal("0.000001")  # ModelPrice energy fields keep 6 decimal places
# genai-prices provider ids (ModelPrice.provider) -> EcoLogits provider names
PROVIDERS = {
    "openai": "openai",
    "azure": "openai",
    "anthropic": "anthropic",
    "mistral": "mistralai",
    "google": "google_genai",
    "cohere": "cohere",
}
ACTOR = "sync_energy"


@dataclass(frozen=True)
class EnergyDefault:
    """Wh per 1,000 input and output tokens for one model, and where they come from."""

    model: str
    wh_per_1k_input: Decimal
    wh_per_1k_output: Decimal
    output_low: Decimal
    output_high: Decimal
    source: str  # "EcoLogits <version>"
    reference: str  # EcoLogits provider/model the figure is for
    warnings: tuple[str, ...] = ()


@dataclass
class EnergySyncResult:
    filled: list[tuple[EnergyDefault, int]] = field(default_factory=list)  # default, rows
    kept: list[str] = field(default_factory=list)  # already have a coefficient
    unmatched: list[str] = field(default_factory=list)  # EcoLogits does not know them


def ecologits_version() -> str:
    return importlib.metadata.version("ecologits")


def _wh(kwh: float) -> Decimal:
    # repr() of a float is the shortest string that reads back to it: deterministic
    return (Decimal(repr(kwh)) * 1000).quantize(PLACES, ROUND_HALF_EVEN)


def _ends(value: Any) -> tuple[float, float]:
    low, high = (value.min, value.max) if hasattr(value, "min") else (value, value)
    return float(low), float(high)


# A vendor's model as a cloud names it: Bedrock's `[us.|eu.|…]anthropic.claude-…-v1:0` (a
# cross-region profile, the vendor, the model, the version) and Vertex's `claude-…@20250929`.
_BEDROCK_ID = re.compile(r"(?:[a-z-]+\.)?(anthropic|mistral|cohere)\.(.+?)(?:-v\d+(?::\d+)?)?")
_VERTEX_CLAUDE = re.compile(r"(claude-[a-z0-9-]+)@(\d{8})")
_VENDORS = {"anthropic": "anthropic", "mistral": "mistralai", "cohere": "cohere"}


def _vendor_model(name: str) -> tuple[str, str] | None:
    """(EcoLogits provider, the vendor's own model name) for a cloud's id of it, else None."""
    if found := _BEDROCK_ID.fullmatch(name):
        return _VENDORS[found.group(1)], found.group(2)
    if found := _VERTEX_CLAUDE.fullmatch(name):
        return "anthropic", f"{found.group(1)}-{found.group(2)}"
    return None


def _find(name: str, providers: list[str]) -> tuple[str, Any] | None:
    from ecologits.model_repository import models

    for provider in providers:
        if (mapped := PROVIDERS.get(provider)) and models.find_model(mapped, name) is not None:
            return mapped, models.find_model(mapped, name)
    # Bedrock and Vertex serve the vendor's own model: its figure is the vendor's.
    if (vendor := _vendor_model(name)) and (model := models.find_model(*vendor)) is not None:
        return vendor[0], model
    found = [m for m in models.list_models() if m.name == name]
    if len({m.provider.value for m in found}) == 1:
        return found[0].provider.value, found[0]
    return None


def energy_default(name: str, providers: list[str] | None = None) -> EnergyDefault | None:
    """EcoLogits' figure for the model `name` (see the module docstring for the method), or
    None when EcoLogits does not know the model."""
    from ecologits.tracers.utils import llm_impacts

    found = _find(name, providers or [])
    if found is None:
        return None
    provider, model = found
    # No measured latency: EcoLogits' own estimate, uncapped.
    one_k = _ends(llm_impacts(provider, model.name, 1000, math.inf).energy.value)
    zero = _ends(llm_impacts(provider, model.name, 0, math.inf).energy.value)
    low, high = one_k[0] - zero[0], one_k[1] - zero[1]
    return EnergyDefault(
        model=name,
        wh_per_1k_input=Decimal(0).quantize(PLACES),
        wh_per_1k_output=_wh((low + high) / 2),
        output_low=_wh(low),
        output_high=_wh(high),
        source=f"EcoLogits {ecologits_version()}",
        reference=f"{provider}/{model.name}",
        warnings=tuple(w.code for w in model.warnings),
    )


def energy_defaults_sync(*, actor: Any = ACTOR) -> EnergySyncResult:
    """Fill both energy coefficients of every priced model that has none on any of its price
    rows, from EcoLogits. Never changes a row that has a coefficient, nor any row of a model
    that has one anywhere (an admin's choice wins); running it again changes nothing."""
    result = EnergySyncResult()
    has_energy = Q(energy_wh_per_1k_input__isnull=False) | Q(energy_wh_per_1k_output__isnull=False)
    kept = set(ModelPrice.objects.filter(has_energy).values_list("model", flat=True))
    with transaction.atomic():
        names = sorted(set(ModelPrice.objects.values_list("model", flat=True)))
        for name in names:
            if name in kept:
                result.kept.append(name)
                continue
            rows = list(ModelPrice.objects.select_for_update().filter(model=name).order_by("pk"))
            if any(r.energy_wh_per_1k_input is not None or r.energy_wh_per_1k_output is not None
                   for r in rows):  # fmt: skip
                result.kept.append(name)  # set since the first read: leave it
                continue
            default = energy_default(name, sorted({r.provider for r in rows if r.provider}))
            if default is None:
                result.unmatched.append(name)
                continue
            for row in rows:
                _fill(row, default, actor)
            result.filled.append((default, len(rows)))
    return result


def _fill(row: ModelPrice, default: EnergyDefault, actor: Any) -> None:
    before = snapshot(row)
    row.energy_wh_per_1k_input = default.wh_per_1k_input
    row.energy_wh_per_1k_output = default.wh_per_1k_output
    row.save(update_fields=["energy_wh_per_1k_input", "energy_wh_per_1k_output"])
    after = snapshot(row) or {}
    after["energy_source"] = {
        "source": default.source,
        "reference": default.reference,
        "wh_per_1k_output_range": [str(default.output_low), str(default.output_high)],
        "method": "metering.energy: marginal Wh of 1,000 output tokens, range midpoint; "
        "input 0 (no input-token term in the methodology)",
        "warnings": list(default.warnings),
    }
    audit_record(
        actor=actor, action="energy_default", obj=row, before=before, after=after, source="command"
    )
