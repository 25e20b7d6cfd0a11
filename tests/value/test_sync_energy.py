"""`manage.py sync_energy`: EcoLogits' figures, computed offline from the installed package,
fill only models without coefficients, are audited with their source, and a re-run changes
nothing."""

from __future__ import annotations

import datetime as dt
import math
from decimal import ROUND_HALF_EVEN, Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from budgets.models import AuditEvent
from metering.energy import ecologits_version, energy_default
from metering.models import ModelPrice

SINCE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def price(model: str, provider: str = "", *, days: int = 0, **energy: Decimal) -> ModelPrice:
    return ModelPrice.objects.create(
        model=model, provider=provider, input_per_mtok=1, output_per_mtok=2,
        effective_from=SINCE + dt.timedelta(days=days), **energy,
    )  # fmt: skip


def sync(*args: str) -> str:
    out = StringIO()
    call_command("sync_energy", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def energy(model: str) -> list[tuple]:
    return list(
        ModelPrice.objects.filter(model=model)
        .order_by("effective_from")
        .values_list("energy_wh_per_1k_input", "energy_wh_per_1k_output")
    )


def dense_wh_per_1k_output(params_b: float, pue_low: float, pue_high: float) -> Decimal:
    """EcoLogits' published method by hand, for a dense model small enough for one GPU with no
    published speed: per token, GPU energy a x exp(b x 64) x P + c (Wh), plus the server's
    1.2 kW x 1/8 of it / 64 requests over the regression latency, times PUE (midpoint)."""
    gpu_wh = 1.1665273170451914e-06 * math.exp(-0.011205921025579175 * 64) * params_b
    gpu_wh += 4.052928146734005e-05
    latency_s = 0.0006785088094353663 * params_b + 0.0003119310311688259 * 64
    latency_s += 0.019473717579473387
    server_wh = latency_s / 3600 * 1200 * 1 / 8 / 64
    per_1k = 1000 * (gpu_wh + server_wh) * (pue_low + pue_high) / 2
    return Decimal(repr(per_1k)).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)


@pytest.mark.django_db
def test_a_dense_model_gets_the_figure_of_the_published_method() -> None:
    price("databricks/dolly-v1-6b")  # no provider: the one EcoLogits provider knowing it
    sync()
    expected = dense_wh_per_1k_output(6.0, 1.09, 1.14)  # Hugging Face PUE range
    assert energy("databricks/dolly-v1-6b") == [(Decimal(0), expected)]
    assert Decimal("0.05") < expected < Decimal("0.12")  # about 0.08 Wh per 1k


@pytest.mark.django_db
def test_gpt_4o_figure_and_range_are_pinned_to_the_package_version() -> None:
    default = energy_default("gpt-4o", ["openai"])
    assert default is not None
    assert ecologits_version() == "0.11.3"  # a new version may move the figures below
    assert (default.output_low, default.wh_per_1k_output, default.output_high) == (
        Decimal("1.428122"), Decimal("1.909163"), Decimal("2.390204"),
    )  # fmt: skip
    assert default.wh_per_1k_input == Decimal(0)
    assert default.reference == "openai/gpt-4o"
    assert "model-arch-not-released" in default.warnings


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("cloud_id", "provider"),
    [
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws"),  # Bedrock, a US profile
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "aws"),  # Bedrock, one region
        ("claude-sonnet-4-5@20250929", "google"),  # Vertex AI
    ],
)
def test_a_clouds_id_of_a_vendors_model_gets_the_vendors_figure(
    cloud_id: str, provider: str
) -> None:
    own = energy_default("claude-sonnet-4-5-20250929", ["anthropic"])
    served = energy_default(cloud_id, [provider])
    assert own is not None and served is not None
    assert served.reference == own.reference == "anthropic/claude-sonnet-4-5-20250929"
    assert (served.model, served.wh_per_1k_output) == (cloud_id, own.wh_per_1k_output)
    assert served.wh_per_1k_output > 0
    # An id the vendor's catalogue does not know stays unmatched.
    assert energy_default("us.anthropic.claude-nonesuch-v1:0", ["aws"]) is None


@pytest.mark.django_db
def test_every_row_of_the_model_is_filled_and_audited_with_its_source() -> None:
    rows = [price("gpt-4o", "openai"), price("gpt-4o", days=10)]
    out = sync()
    assert "gpt-4o: 0.000000 Wh per 1k input, 1.909163 Wh per 1k output" in out
    assert energy("gpt-4o") == [(Decimal(0), Decimal("1.909163"))] * 2
    events = list(AuditEvent.objects.filter(action="energy_default").order_by("pk"))
    assert sorted(int(e.object_id) for e in events) == sorted(r.pk for r in rows)
    source = events[0].after["energy_source"]
    assert (source["source"], source["reference"], events[0].actor_label) == (
        "EcoLogits 0.11.3", "openai/gpt-4o", "sync_energy",
    )  # fmt: skip
    assert source["wh_per_1k_output_range"] == ["1.428122", "2.390204"]
    assert events[0].before["energy_wh_per_1k_output"] is None


@pytest.mark.django_db
def test_set_coefficients_are_never_overwritten_and_a_rerun_changes_nothing() -> None:
    price("gpt-4o", "openai", energy_wh_per_1k_output=Decimal("3"))  # an admin's, half set
    price("gpt-4o", "openai", days=10)
    price("gpt-4o-mini", "openai")
    price("claude-2", "anthropic")  # unknown to EcoLogits
    first = sync()
    assert "1 model(s) filled, 1 kept as set, 1 unknown to EcoLogits." in first
    assert energy("gpt-4o") == [(None, Decimal(3)), (None, None)]
    assert energy("claude-2") == [(None, None)]
    filled = energy("gpt-4o-mini")
    events = AuditEvent.objects.count()
    assert "0 model(s) filled, 2 kept as set, 1 unknown to EcoLogits." in sync()
    assert energy("gpt-4o-mini") == filled
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_dry_run_saves_nothing() -> None:
    price("gpt-4o", "openai")
    out = sync("--dry-run")
    assert "1 model(s) filled" in out and "Dry run: nothing was saved." in out
    assert energy("gpt-4o") == [(None, None)]
    assert not AuditEvent.objects.exists()
