"""sync_prices: seeds catalogue rows from the bundled genai-prices data, idempotently."""

from __future__ import annotations

import datetime as dt
import io
import socket
from decimal import Decimal

import pytest
from django.core.management import call_command

from metering.models import ModelPrice, ModelRoute, Upstream
from metering.price_catalog import SEED_FROM, prices_sync
from metering.selectors import price_in_force

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
CATALOG = ModelPrice.Source.CATALOG


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("sync_prices must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.django_db
def test_seeds_openai_and_anthropic_then_adds_nothing() -> None:
    first = prices_sync(now=NOW)
    assert len(first.added) > 50
    providers = {row.provider for row in first.added}
    assert providers == {"openai", "anthropic"}
    second = prices_sync(now=NOW + dt.timedelta(days=1))
    assert second.added == []


@pytest.mark.django_db
def test_catalogue_values_and_fallbacks() -> None:
    prices_sync(now=NOW)
    haiku = ModelPrice.objects.get(model="claude-3-5-haiku-latest", source=CATALOG)
    assert (haiku.input_per_mtok, haiku.output_per_mtok) == (Decimal("0.8"), Decimal("4"))
    assert (haiku.cached_input_per_mtok, haiku.cache_write_per_mtok) == (
        Decimal("0.08"),
        Decimal("1"),
    )
    assert haiku.effective_from == SEED_FROM


@pytest.mark.django_db
def test_dated_catalogue_prices_become_dated_rows() -> None:
    # The catalogue cut o3's input price from 10 to 2 USD on 2025-06-10.
    prices_sync(now=NOW)
    before = price_in_force("o3", dt.datetime(2025, 6, 9, tzinfo=dt.UTC))
    after = price_in_force("o3", dt.datetime(2025, 6, 10, tzinfo=dt.UTC))
    assert (before.input_per_mtok, after.input_per_mtok) == (Decimal("10"), Decimal("2"))


@pytest.mark.django_db
def test_routed_models_get_their_family_price_and_unknown_ones_are_reported() -> None:
    upstream = Upstream.objects.create(name="anth", kind="anthropic", base_url="https://x.test")
    local = Upstream.objects.create(name="vllm", kind="openai_compatible", base_url="http://v")
    ModelRoute.objects.create(
        public_name="haiku", upstream=upstream, upstream_model="claude-3-5-haiku-20241022"
    )
    ModelRoute.objects.create(public_name="mine", upstream=local, upstream_model="my-finetune-7b")
    result = prices_sync(now=NOW)
    routed = ModelPrice.objects.get(model="claude-3-5-haiku-20241022")
    assert routed.input_per_mtok == Decimal("0.8")
    assert result.unmatched == ["my-finetune-7b"]


@pytest.mark.django_db
def test_bedrock_routes_get_bedrocks_own_prices() -> None:
    """A Bedrock model id, with or without a cross-region inference profile, takes Bedrock's
    price (an EU profile costs more than the model on Anthropic's own API)."""
    bedrock = Upstream.objects.create(
        name="aws", kind="bedrock", base_url="https://bedrock-runtime.eu-west-1.amazonaws.com"
    )
    routed = {
        "sonnet-eu": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "haiku": "anthropic.claude-3-haiku-20240307-v1:0",
        "nova": "us.amazon.nova-lite-v1:0",
    }
    for public, model in routed.items():
        ModelRoute.objects.create(public_name=public, upstream=bedrock, upstream_model=model)
    result = prices_sync(now=NOW)
    assert result.unmatched == []
    rows = {m: ModelPrice.objects.get(model=m, source=CATALOG) for m in routed.values()}
    assert {row.provider for row in rows.values()} == {"aws"}
    sonnet = rows["eu.anthropic.claude-sonnet-4-5-20250929-v1:0"]
    assert (sonnet.input_per_mtok, sonnet.output_per_mtok) == (Decimal("3.3"), Decimal("16.5"))
    assert (sonnet.cached_input_per_mtok, sonnet.cache_write_per_mtok) == (
        Decimal("0.33"),
        Decimal("4.125"),
    )
    haiku = rows["anthropic.claude-3-haiku-20240307-v1:0"]
    assert (haiku.input_per_mtok, haiku.output_per_mtok) == (Decimal("0.25"), Decimal("1.25"))
    nova = rows["us.amazon.nova-lite-v1:0"]
    assert (nova.input_per_mtok, nova.cached_input_per_mtok) == (Decimal("0.06"), Decimal("0.015"))


@pytest.mark.django_db
def test_changed_price_adds_a_row_and_overrides_are_untouched() -> None:
    prices_sync(now=NOW)
    row = ModelPrice.objects.get(model="claude-3-5-haiku-latest", source=CATALOG)
    # As if the catalogue used to say something else: the next sync records today's price.
    ModelPrice.objects.filter(pk=row.pk).update(input_per_mtok=Decimal("1.5"))
    override = ModelPrice.objects.create(
        model="claude-3-5-haiku-latest",
        input_per_mtok=Decimal("0.5"),
        output_per_mtok=Decimal("2"),
        effective_from=SEED_FROM,
        source=ModelPrice.Source.OVERRIDE,
    )
    later = NOW + dt.timedelta(days=30)
    result = prices_sync(now=later)
    assert [(r.model, r.effective_from, r.input_per_mtok) for r in result.added] == [
        ("claude-3-5-haiku-latest", later, Decimal("0.8"))
    ]
    override.refresh_from_db()
    assert override.input_per_mtok == Decimal("0.5")
    assert ModelPrice.objects.filter(source=ModelPrice.Source.OVERRIDE).count() == 1
    assert prices_sync(now=later + dt.timedelta(days=1)).added == []


@pytest.mark.django_db
def test_command_prints_and_dry_run_saves_nothing() -> None:
    out = io.StringIO()
    call_command("sync_prices", "--dry-run", stdout=out)
    assert "added gpt-4o (openai)" in out.getvalue()
    assert "Dry run" in out.getvalue()
    assert ModelPrice.objects.count() == 0
    out = io.StringIO()
    call_command("sync_prices", stdout=out)
    added = ModelPrice.objects.count()
    assert f"{added} price rows added." in out.getvalue()
    out = io.StringIO()
    call_command("sync_prices", stdout=out)
    assert out.getvalue().strip() == "0 price rows added."
    assert ModelPrice.objects.count() == added
