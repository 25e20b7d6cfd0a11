"""The proxy's data: virtual keys, upstreams and routes, prices, usage records."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from budgets.models import MONEY, CostCenter, Employee

PRICE = {"max_digits": 20, "decimal_places": 8}


class VirtualKey(models.Model):
    """An employee's API key for the proxy. Only its SHA-256 hash is stored; the key itself is
    shown once, when it is created."""

    employee = models.ForeignKey(Employee, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, help_text="The visible start of the key, for recognition."
    )
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Empty: the policy decides."
    )
    cap_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="This key's own lifetime cap, in tokens."
    )
    used_tokens = models.PositiveBigIntegerField(default=0)
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    default_intent = models.CharField(max_length=100, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"


class Upstream(models.Model):
    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        AZURE_OPENAI = "azure_openai", "Azure OpenAI"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Ollama, …)"
        GEMINI = "gemini", "Google Gemini API"
        BEDROCK = "bedrock", "AWS Bedrock (Converse)"
        VERTEX = "vertex", "Google Vertex AI (Gemini)"
        VERTEX_ANTHROPIC = "vertex_anthropic", "Google Vertex AI (Anthropic)"
        BEDROCK_ANTHROPIC = "bedrock_anthropic", "AWS Bedrock (Anthropic)"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    base_url = models.URLField(
        max_length=500, help_text="Set by admins only; clients never choose it."
    )
    credential_env = models.CharField(
        max_length=100,
        blank=True,
        help_text=(
            "Environment variable holding the provider key (never the key itself); for "
            "Vertex AI, the path of a service-account key file (empty: the default credentials)."
        ),
    )
    api_version = models.CharField(
        max_length=32,
        blank=True,
        help_text="Azure api-version; a Bedrock upstream's AWS region; a Vertex AI region.",
    )
    connect_timeout = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal(10))
    read_timeout = models.DecimalField(max_digits=7, decimal_places=2, default=Decimal(600))
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelRoute(models.Model):
    """A public model name clients ask for, served by one or more deployments (`Deployment`).

    `upstream` and `upstream_model` are the route's first deployment (best priority, then
    oldest), kept equal to it by `catalog_services`; a route without deployment rows (one made
    straight through the ORM) is served by them alone."""

    public_name = models.CharField(max_length=200, unique=True)
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="routes")
    upstream_model = models.CharField(max_length=200)
    default_max_output_tokens = models.PositiveIntegerField(
        default=4096, help_text="Reserved for output when the client sets no max_tokens."
    )
    unmetered_cost = models.BooleanField(
        default=False,
        help_text="Self-hosted: no price needed; only token allowances may use it.",
    )
    active = models.BooleanField(default=True)
    fallback_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Public names of other routes tried, in order, once every deployment failed.",
    )

    class Meta:
        ordering = ["public_name"]

    def __str__(self) -> str:
        return f"{self.public_name} -> {self.upstream_id}:{self.upstream_model}"


class Deployment(models.Model):
    """One way a route is served: an upstream under its own model name. The proxy picks among
    the healthy deployments of the best (lowest) priority by weight, least in flight on equal
    weights, and falls back to the next on a connect error, a timeout, a 429 or a 5xx."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="deployments")
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=200)
    weight = models.PositiveIntegerField(default=1)
    priority = models.PositiveSmallIntegerField(default=0, help_text="Lower is tried first.")
    rpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute this deployment takes (per process)."
    )
    tpm = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per minute this deployment takes (per process)."
    )

    class Meta:
        ordering = ["route", "priority", "id"]

    def __str__(self) -> str:
        return f"{self.route_id}: {self.upstream_id}:{self.upstream_model} (p{self.priority})"


class ModelRouteAlias(models.Model):
    """Another public name for a route: clients that ask for it are served by the route, and
    its usage is recorded under the route's own public name. A name is either a route's
    public name or one alias, never both (checked by `catalog_services.route_aliases_set`)."""

    name = models.CharField(max_length=200, unique=True)
    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="aliases")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} -> {self.route_id}"


class ModelPrice(models.Model):
    """USD per million tokens of each kind, in force from `effective_from`. Admin overrides
    (negotiated prices) win over catalogue rows in force at the same time."""

    class Source(models.TextChoices):
        CATALOG = "catalog", "Price catalogue"
        OVERRIDE = "override", "Admin override"

    model = models.CharField(max_length=200, db_index=True, help_text="Upstream model name.")
    provider = models.CharField(max_length=64, blank=True)
    input_per_mtok = models.DecimalField(**PRICE)
    output_per_mtok = models.DecimalField(**PRICE)
    cached_input_per_mtok = models.DecimalField(**PRICE, null=True, blank=True)
    cache_write_per_mtok = models.DecimalField(**PRICE, null=True, blank=True)
    energy_wh_per_1k_input = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    energy_wh_per_1k_output = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.OVERRIDE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "source", "effective_from"], name="one_price_per_model_source_time"
            ),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0) & Q(output_per_mtok__gte=0),
                name="price_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d} ({self.source})"


class UsageRecord(models.Model):
    """One metered call. Written exactly once, keyed by request id; never holds prompt text."""

    class Source(models.TextChoices):
        PROVIDER = "provider", "Provider usage"
        ESTIMATED = "estimated", "Local estimate"
        NONE = "none", "No usage (refused or failed before output)"

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="usage")
    key = models.ForeignKey(
        VirtualKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    cost_center = models.ForeignKey(CostCenter, on_delete=models.PROTECT, related_name="usage")
    upstream = models.ForeignKey(
        Upstream, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    provider = models.CharField(max_length=24, blank=True)
    model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    # The deployment that served (None: a route served by its own fields, or one deleted since).
    deployment = models.ForeignKey(
        "Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(
        default=1, help_text="Deployments tried for this call, the serving one included."
    )
    endpoint = models.CharField(max_length=32)
    input_tokens = models.PositiveBigIntegerField(
        default=0, help_text="All input, cached included."
    )
    output_tokens = models.PositiveBigIntegerField(
        default=0, help_text="All output, reasoning included."
    )
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField()
    streamed = models.BooleanField(default=False)
    estimated = models.BooleanField(default=False)
    usage_source = models.CharField(max_length=16, choices=Source.choices, default=Source.PROVIDER)
    clamped = models.BooleanField(default=False)
    intent = models.CharField(max_length=100, blank=True, db_index=True)
    error_type = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["employee", "created_at"]),
            models.Index(fields=["cost_center", "created_at"]),
            models.Index(fields=["model", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.input_tokens}/{self.output_tokens}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Intent(models.Model):
    """An admin-curated use of AI (the `intent` tag of calls). Calls are never refused for an
    intent missing here: unknown tags are recorded as given and listed for adoption."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner_cost_center = models.ForeignKey(
        CostCenter, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    expected_value = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Money one accepted outcome is worth when the outcome carries no value.",
    )
    default_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="Public model name `auto:<intent>` routes to until a recommendation exists.",
    )
    recommended_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="Written by the value report job: the model the comparison favours.",
    )
    recommended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Outcome(models.Model):
    """What a call (or the calls of an intent over a time window) produced.

    The call's employee, cost center, model, intent and local day are copied onto the row when
    it is recorded, so value reports group outcomes by the same keys as `DailyUsage` without
    reading the usage table. Value is an integer count of 1e-10 currency units, like the
    billing tables, so sums stay exact on SQLite too.
    """

    ACCEPTED = "accepted"
    REJECTED = "rejected"

    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    client_id = models.CharField(max_length=100, help_text="The caller's idempotency key.")
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    intent = models.CharField(max_length=100, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    employee = models.ForeignKey(
        Employee, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    cost_center = models.ForeignKey(
        CostCenter, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    model = models.CharField(max_length=200, blank=True)
    day = models.DateField()
    kind = models.CharField(max_length=100)
    value_units = models.BigIntegerField(null=True, blank=True)
    quantity = models.PositiveIntegerField(default=1)
    note = models.CharField(max_length=1000, blank=True)
    source = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["recorded_by", "client_id"], name="outcome_once_per_client_id"
            ),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="outcome_quantity_positive"),
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.kind} x{self.quantity} ({self.request_id or self.intent})"

    @property
    def value(self) -> Decimal | None:
        return None if self.value_units is None else Decimal(self.value_units).scaleb(-10)


class UsageDeadLetter(models.Model):
    """A usage event the stream consumer could not write as it came (a NUL or a lone
    surrogate in its text, text too long for its column, an unknown format, a row it refers
    to gone), kept with its original bytes and the error so that nothing is lost.

    `written`: the record was written with its text escaped or cut, and its charge applied; the
    original is kept here for reference. `unapplied`: nothing could be written, neither the
    record nor its charge; `replay_dead_letters` applies it once the cause is fixed (the
    request id decides, so a replay never charges twice), and it becomes `replayed`."""

    class State(models.TextChoices):
        WRITTEN = "written", "Written with escaped text"
        UNAPPLIED = "unapplied", "Not applied: waits for a replay"
        REPLAYED = "replayed", "Applied by a replay"

    # The stream entry: one dead letter per entry, however often the entry is delivered.
    entry_id = models.CharField(max_length=48, unique=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, db_index=True)
    error = models.TextField()
    payload = models.BinaryField(help_text="The event exactly as it was on the stream.")
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.entry_id} {self.state} {self.request_id}"
