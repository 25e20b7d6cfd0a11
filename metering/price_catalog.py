"""Seed and refresh catalogue prices from the `genai-prices` package's bundled snapshot.

genai-prices can also fetch fresh data over the network (its `UpdatePrices` background task);
this module never starts it and reads `genai_prices.data.providers`, the snapshot shipped
inside the installed package, so a sync is reproducible and works offline. Upgrading the
package is how prices get refreshed.

Rows are append-only: a model gets a new catalogue row only when the catalogue's price differs
from the row in force, so running the sync again adds nothing. Override rows are never read
or written here (they win over catalogue rows anyway, see metering.selectors.pick_price).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction

from metering.models import Deployment, ModelPrice, ModelRoute, Upstream

CATALOG_PROVIDERS = ("openai", "anthropic")
# Undated catalogue prices are entered as in force from this moment, so usage recorded before
# the first sync (demo data, imports) still finds a price.
SEED_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PLACES = Decimal("0.00000001")  # ModelPrice stores 8 decimal places
_KIND_TO_PROVIDER: dict[str, str] = {
    Upstream.Kind.OPENAI: "openai",
    Upstream.Kind.AZURE_OPENAI: "openai",
    Upstream.Kind.ANTHROPIC: "anthropic",
    Upstream.Kind.GEMINI: "google",
    # genai-prices' `google` provider lists Vertex AI's Gemini and Claude prices; its model
    # rules match Vertex's `claude-...@{date}` ids to their family.
    Upstream.Kind.VERTEX: "google",
    Upstream.Kind.VERTEX_ANTHROPIC: "google",
    # genai-prices' `aws` provider lists Bedrock's prices; its rules match the cross-region
    # inference profiles (`us.`, `eu.`, `apac.`, `global.` before the model id) to their entry.
    Upstream.Kind.BEDROCK: "aws",
    Upstream.Kind.BEDROCK_ANTHROPIC: "aws",
}


@dataclass(frozen=True)
class CatalogPrice:
    """One price of one model as the catalogue states it (USD per million tokens)."""

    provider: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    cache_write: Decimal | None
    starts: dt.datetime | None  # None: no start date in the catalogue

    def values(self) -> tuple[Decimal, Decimal, Decimal | None, Decimal | None]:
        return (self.input, self.output, self.cached_input, self.cache_write)


@dataclass(frozen=True)
class SyncResult:
    added: list[ModelPrice]
    unmatched: list[str]  # routed model names the catalogue does not know


def _rate(value: Any) -> Decimal | None:
    """A per-million rate; a tiered (long-context) price contributes its base tier."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    return Decimal(base).quantize(_PLACES)


def _row_values(row: ModelPrice) -> tuple[Decimal, Decimal, Decimal | None, Decimal | None]:
    return (
        row.input_per_mtok,
        row.output_per_mtok,
        row.cached_input_per_mtok,
        row.cache_write_per_mtok,
    )


def catalog_prices(provider_id: str, model_info: Any) -> list[CatalogPrice]:
    """The catalogue's token prices for one genai-prices ModelInfo, oldest first.

    Conditional prices with a start date become dated entries; time-of-day prices (off-peak
    discounts) are skipped because a ModelPrice row cannot express them. Models without any
    token price (image or audio only) give no entries."""
    from genai_prices.types import ConditionalPrice, StartDateConstraint

    prices = model_info.prices
    conditions = prices if isinstance(prices, list) else [ConditionalPrice(prices=prices)]
    entries: list[CatalogPrice] = []
    for condition in conditions:
        constraint = condition.constraint
        if constraint is not None and not isinstance(constraint, StartDateConstraint):
            continue
        price = condition.prices
        if price.input_mtok is None and price.output_mtok is None:
            continue
        starts = None
        if constraint is not None:
            starts = dt.datetime.combine(constraint.start_date, dt.time(), tzinfo=dt.UTC)
        entries.append(
            CatalogPrice(
                provider=provider_id,
                input=_rate(price.input_mtok) or Decimal(0),
                output=_rate(price.output_mtok) or Decimal(0),
                cached_input=_rate(price.cache_read_mtok),
                cache_write=_rate(price.cache_write_mtok),
                starts=starts,
            )
        )
    return sorted(entries, key=lambda e: e.starts or SEED_FROM)


def _snapshot() -> Any:
    # Built from the bundled data directly, never from a custom or auto-updated snapshot.
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def catalog_models(
    routes: Iterable[tuple[str, str | None]],
) -> tuple[dict[str, list[CatalogPrice]], list[str]]:
    """Model name -> catalogue prices for every model of CATALOG_PROVIDERS and for each routed
    (upstream model name, provider id or None) pair; plus the routed names not found."""
    snapshot = _snapshot()
    models: dict[str, list[CatalogPrice]] = {}
    for provider in snapshot.providers:
        if provider.id in CATALOG_PROVIDERS:
            for info in provider.models:
                models[info.id] = catalog_prices(provider.id, info)
    unmatched = []
    for name, provider_id in routes:
        if name in models:
            continue
        try:
            provider, info = snapshot.find_provider_model(name, None, provider_id, None)
        except LookupError:
            unmatched.append(name)
            continue
        models[name] = catalog_prices(provider.id, info)
    return {name: entries for name, entries in models.items() if entries}, unmatched


def _in_force(entries: list[CatalogPrice], at: dt.datetime) -> CatalogPrice | None:
    current = None
    for entry in entries:
        if entry.starts is None or entry.starts <= at:
            current = entry
    return current


def _sync_model(name: str, entries: list[CatalogPrice], now: dt.datetime) -> list[ModelPrice]:
    rows = {
        row.effective_from: row
        for row in ModelPrice.objects.filter(model=name, source=ModelPrice.Source.CATALOG)
    }
    wanted: list[tuple[dt.datetime, CatalogPrice]] = []
    undated = [e for e in entries if e.starts is None]
    if not rows and undated:
        wanted.append((SEED_FROM, undated[0]))
    # Dated catalogue prices are facts about their own dates, past or scheduled.
    wanted.extend((e.starts, e) for e in entries if e.starts is not None)
    added = [_create(name, entry, when) for when, entry in wanted if when not in rows]
    for row in added:
        rows[row.effective_from] = row
    # The catalogue's price for today differs from the row in force: the price changed.
    current = _in_force(entries, now)
    past = [when for when in rows if when <= now]
    if current is not None and past:
        latest = rows[max(past)]
        if _row_values(latest) != current.values():
            added.append(_create(name, current, now))
    return added


def _create(name: str, entry: CatalogPrice, when: dt.datetime) -> ModelPrice:
    return ModelPrice.objects.create(
        model=name,
        provider=entry.provider,
        input_per_mtok=entry.input,
        output_per_mtok=entry.output,
        cached_input_per_mtok=entry.cached_input,
        cache_write_per_mtok=entry.cache_write,
        effective_from=when,
        source=ModelPrice.Source.CATALOG,
    )


def prices_sync(*, now: dt.datetime) -> SyncResult:
    """Bring catalogue rows up to date with the bundled catalogue, as of `now`.

    Covers every OpenAI and Anthropic model in the catalogue and every upstream model name in
    ModelRoute and Deployment (matched by the catalogue's own model-name rules, so a dated snapshot name finds
    its family's price). Adds rows only; returns them, and the routed names with no price."""
    now = now.replace(microsecond=0)
    routes = [
        (route.upstream_model, _KIND_TO_PROVIDER.get(route.upstream.kind))
        for route in ModelRoute.objects.select_related("upstream")
    ]
    routes += [
        (d.upstream_model, _KIND_TO_PROVIDER.get(d.upstream.kind))
        for d in Deployment.objects.select_related("upstream")
    ]
    routes = list(dict.fromkeys(routes))
    models, unmatched = catalog_models(routes)
    added: list[ModelPrice] = []
    with transaction.atomic():
        for name in sorted(models):
            added.extend(_sync_model(name, models[name], now))
    return SyncResult(added=added, unmatched=unmatched)
