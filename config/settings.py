"""Tokenbudget settings: everything here is read from the environment (see README "Settings")."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_choice, env_decimal, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("TB_DEBUG", False)
SECRET_KEY = env_str("TB_SECRET_KEY") or "insecure-dev-key-change-me-" + "0" * 24
ALLOWED_HOSTS = env_list("TB_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("TB_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "budgets",
    "metering",
    "billing",
    "identity",
    "mozilla_django_oidc",
    "config",  # the project's own commands (run_jobs: the beat schedule in-process)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into its lockout response.
    "axes.middleware.AxesMiddleware",
]

# --- Sign-in, cookies, TLS --------------------------------------------------------------------
# django-axes counts failed sign-ins (the pages' login and /admin/) per username and client
# address; at the limit that pair is locked out for the cool-off, even with the right password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Passwords, unless TB_PASSWORD_SIGN_IN is off (then only the break-glass admins).
    "identity.backends.PasswordBackend",
    "identity.oidc.EmployeeOIDCBackend",  # SSO; refuses every sign-in unless TB_OIDC_ISSUER
]
AXES_FAILURE_LIMIT = env_int("TB_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
AXES_COOLOFF_TIME = dt.timedelta(
    minutes=env_int("TB_LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60)
)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Behind TLS: cookies only over HTTPS, the proxy's header says a request came in over HTTPS,
# plain HTTP is redirected and browsers are told to stay on HTTPS (HSTS).
TB_SECURE_COOKIES = env_bool("TB_SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = TB_SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
TB_PROXY_SSL_HEADER = env_str("TB_PROXY_SSL_HEADER").strip()
if TB_PROXY_SSL_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", TB_PROXY_SSL_HEADER):
    raise ImproperlyConfigured(
        f"TB_PROXY_SSL_HEADER must be a header name such as X-Forwarded-Proto, got "
        f"{TB_PROXY_SSL_HEADER!r}"
    )
if TB_PROXY_SSL_HEADER:
    # Only when the proxy sets this header itself (and strips a client's): else any client
    # could claim HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + TB_PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = env_bool("TB_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("TB_HSTS_SECONDS", 0, minimum=0, maximum=2 * 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("TB_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("TB_HSTS_PRELOAD", False)

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'tokenbudget.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("TB_DB_CONN_MAX_AGE", 60))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so two writers never deadlock while
    # upgrading a read lock; WAL lets readers run beside the single writer.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
        ),
    }
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}
# Threads (so connections) for the proxy's database work in each process: SQLite has one
# writer at a time, so one thread; PostgreSQL takes a few.
TB_DB_THREADS = env_int(
    "TB_DB_THREADS",
    1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 4,
    minimum=1,
    maximum=64,
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and Celery ------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL
# Without a broker the jobs run in-process (the embedded default).
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"

# --- Tokenbudget ---------------------------------------------------------------------------
TB_FISCAL_YEAR_START_MONTH = env_int("TB_FISCAL_YEAR_START_MONTH", 1, minimum=1, maximum=12)
TB_CURRENCY = env_str("TB_CURRENCY", "USD").upper()
TB_MAX_BODY_BYTES = env_int("TB_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
# Django refuses larger bodies itself; the proxy checks TB_MAX_BODY_BYTES to answer in the
# provider's error shape, so Django's own limit must not be the lower one.
DATA_UPLOAD_MAX_MEMORY_SIZE = TB_MAX_BODY_BYTES + 1024
# Parallel answers per call (chat `n`): each may use the whole output limit, so the hold covers
# prompt + n x limit; a call asking for more is refused with a 400.
TB_MAX_CHOICES = env_int("TB_MAX_CHOICES", 16, minimum=1, maximum=128)
# Arrays and objects nested deeper than this in a request body are refused (400): parsing, token
# counting and re-encoding a deeper body would recurse past the interpreter's limit.
TB_MAX_JSON_DEPTH = env_int("TB_MAX_JSON_DEPTH", 64, minimum=8, maximum=512)
# Threads per process that parse bodies over 64 KiB and count long prompts, off the event loop.
TB_PARSE_THREADS = env_int("TB_PARSE_THREADS", 2, minimum=1, maximum=64)
# Bounds of each per-process cache (keys, routes, intents): entries, and bytes (names plus a
# fixed allowance per value); the least recently used entry goes first.
TB_CACHE_MAX_ENTRIES = env_int("TB_CACHE_MAX_ENTRIES", 50_000, minimum=100)
TB_CACHE_MAX_BYTES = env_int("TB_CACHE_MAX_BYTES", 64 * 1024 * 1024, minimum=64 * 1024)
# How long a call may wait for other calls' open holds to settle before it is refused.
TB_HOLD_WAIT_SECONDS = env_int("TB_HOLD_WAIT_SECONDS", 30, minimum=0, maximum=600)
# At most 4 s: a revoked key must stop working everywhere within 5 s.
TB_KEY_CACHE_SECONDS = env_int("TB_KEY_CACHE_SECONDS", 2, minimum=0, maximum=4)
TB_UPSTREAM_CONNECT_TIMEOUT = env_decimal("TB_UPSTREAM_CONNECT_TIMEOUT", "10")
TB_UPSTREAM_READ_TIMEOUT = env_decimal("TB_UPSTREAM_READ_TIMEOUT", "600")
# Fallbacks (metering.deployments): deployments tried per call at most, and the call's deadline
# for reaching an answer's head across all of them (an attempt's timeouts are cut to what is
# left of it).
TB_ROUTE_MAX_ATTEMPTS = env_int("TB_ROUTE_MAX_ATTEMPTS", 3, minimum=1, maximum=10)
TB_ROUTE_DEADLINE_SECONDS = float(env_decimal("TB_ROUTE_DEADLINE_SECONDS", "600"))
# Circuit breaker per deployment: open after this many failures within the window, one probe
# call after the cool-down. Shared by every proxy process through Redis when it is configured.
TB_BREAKER_FAILURES = env_int("TB_BREAKER_FAILURES", 5, minimum=1, maximum=1000)
TB_BREAKER_WINDOW_SECONDS = float(env_decimal("TB_BREAKER_WINDOW_SECONDS", "30"))
TB_BREAKER_COOLDOWN_SECONDS = float(env_decimal("TB_BREAKER_COOLDOWN_SECONDS", "30"))
# The environment variables an upstream may read its provider key from (credential_env): any
# name with this prefix, and these names. Nothing else, so no upstream can be pointed at
# TB_SECRET_KEY or DATABASE_URL.
TB_UPSTREAM_CREDENTIAL_PREFIX = env_str("TB_UPSTREAM_CREDENTIAL_PREFIX", "TB_UPSTREAM_KEY_")
TB_UPSTREAM_CREDENTIAL_NAMES = env_list(
    "TB_UPSTREAM_CREDENTIAL_NAMES",
    "OPENAI_API_KEY,ANTHROPIC_API_KEY,AZURE_OPENAI_API_KEY,GEMINI_API_KEY",
)
TB_MOCK_UPSTREAM_URL = env_str("TB_MOCK_UPSTREAM_URL", "http://127.0.0.1:8001")
TB_REDIS_DOWN_MODE = env_choice("TB_REDIS_DOWN_MODE", "database", ("database", "closed", "open"))
# How long one Redis command may take before Redis counts as down for the quota path (after one
# more try on a fresh connection; then TB_REDIS_DOWN_MODE applies until a background PING is
# answered, at most a second before Redis is tried again). An unreachable Redis is
# noticed at once (connection refused); this bounds a hung one. Not lower than the event loop's
# worst lag under overload, or a busy process would take a slow reply for an outage.
TB_REDIS_TIMEOUT_MS = env_int("TB_REDIS_TIMEOUT_MS", 3000, minimum=10, maximum=60_000)
# Usage events applied per database transaction by the stream consumer.
TB_USAGE_BATCH = env_int("TB_USAGE_BATCH", 2000, minimum=1, maximum=50_000)
# A consumer read that finds less than a batch waits this long for more before it writes: at
# low load the calls of the window share one transaction (a record waits at most this long).
TB_USAGE_LINGER_MS = env_int("TB_USAGE_LINGER_MS", 200, minimum=0, maximum=1000)
# A stream entry delivered to a consumer that has not acknowledged it for this long (it died
# mid-batch) is claimed by another consumer.
TB_USAGE_CLAIM_IDLE_MS = env_int("TB_USAGE_CLAIM_IDLE_MS", 30_000, minimum=100)
# /readyz answers 503 once the oldest usage event not yet in the database is older than this.
TB_READY_MAX_LAG_SECONDS = env_int("TB_READY_MAX_LAG_SECONDS", 300, minimum=1)
TB_PUBLIC_BASE_URL = env_str("TB_PUBLIC_BASE_URL", "http://127.0.0.1:8000")

# --- Billing, Stripe, alerts, email ---------------------------------------------------------
TB_STRIPE_SECRET_KEY = env_str("TB_STRIPE_SECRET_KEY")  # empty: Stripe sync off
TB_STRIPE_API_BASE = env_str("TB_STRIPE_API_BASE", "https://api.stripe.com")
TB_STRIPE_WEBHOOK_SECRET = env_str("TB_STRIPE_WEBHOOK_SECRET")
TB_STRIPE_TIMEOUT = env_int("TB_STRIPE_TIMEOUT", 20, minimum=1, maximum=300)
TB_STRIPE_LOCALSTRIPE = env_bool("TB_STRIPE_LOCALSTRIPE", False)
TB_STRIPE_FINALIZE_INVOICES = env_bool("TB_STRIPE_FINALIZE_INVOICES", False)
# A failed sync waits this long before its first automatic retry, then twice as long each time,
# up to the cap (billing.stripe_sync.retry_delay).
TB_STRIPE_RETRY_SECONDS = env_int("TB_STRIPE_RETRY_SECONDS", 300, minimum=1, maximum=86400)
TB_STRIPE_RETRY_MAX_SECONDS = env_int(
    "TB_STRIPE_RETRY_MAX_SECONDS", 21600, minimum=1, maximum=604800
)
TB_JOURNAL_CREDIT_ACCOUNT = env_str("TB_JOURNAL_CREDIT_ACCOUNT", "AI-EXPENSE-CENTRAL")
TB_FOCUS_BILLING_ACCOUNT_ID = env_str("TB_FOCUS_BILLING_ACCOUNT_ID", "tokenbudget")
TB_FOCUS_BILLING_ACCOUNT_NAME = env_str("TB_FOCUS_BILLING_ACCOUNT_NAME", "Tokenbudget LLM platform")
TB_FOCUS_INVOICE_ISSUER = env_str("TB_FOCUS_INVOICE_ISSUER", TB_FOCUS_BILLING_ACCOUNT_NAME)
TB_ALERT_WEBHOOK_URL = env_str("TB_ALERT_WEBHOOK_URL")
TB_BILLING_LATE_USAGE_MONTHS = env_int("TB_BILLING_LATE_USAGE_MONTHS", 12, minimum=1, maximum=120)
TB_ROLLUP_WORK_MEM = env_str("TB_ROLLUP_WORK_MEM", "1GB")

DEFAULT_FROM_EMAIL = env_str("TB_EMAIL_FROM", "tokenbudget@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
_EMAIL_BACKEND = env_str("TB_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
_EMAIL_OPTIONS = (
    {
        "host": env_str("TB_EMAIL_HOST", "localhost"),
        "port": env_int("TB_EMAIL_PORT", 25, minimum=1, maximum=65535),
        "username": env_str("TB_EMAIL_USER"),
        "password": env_str("TB_EMAIL_PASSWORD"),
        "use_tls": env_bool("TB_EMAIL_USE_TLS", False),
    }
    if _EMAIL_BACKEND.endswith("smtp.EmailBackend")
    # The file outbox scripts/run.sh uses for demo mail, so it never floods the terminal.
    else {"file_path": env_str("TB_EMAIL_FILE_PATH", "var/outbox")}
    if _EMAIL_BACKEND.endswith("filebased.EmailBackend")
    else {}
)
MAILERS = {"default": {"BACKEND": _EMAIL_BACKEND, "OPTIONS": _EMAIL_OPTIONS}}

# --- REST framework ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "budgets.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {
        # Minting API keys (POST …/keys/): per user, per process.
        "key-create": env_str("TB_KEY_CREATE_RATE", "30/hour"),
    },
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tokenbudget API",
    "DESCRIPTION": "Budgets, keys, usage, chargebacks and value reports.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "UnitEnum": "budgets.models.Unit",
        "ReleaseEnum": "budgets.models.Release",
        "BudgetRequestStatusEnum": "budgets.models.BudgetRequest.Status",
        "StatementStatusEnum": "billing.models.ChargebackStatement.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "budgets.schema_examples.decimal_examples",  # readable decimal examples in the docs
    ],
}

# The largest page a list endpoint returns (`limit` above it is cut to it).
TB_API_MAX_LIMIT = env_int("TB_API_MAX_LIMIT", 500, minimum=1, maximum=10_000)

# --- i18n, static -------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TB_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
LOGIN_URL = "pages:login"
LOGIN_REDIRECT_URL = "pages:home"

# --- Enterprise identity: OIDC sign-in, roles from IdP groups, SCIM (identity/, README) -------
TB_PASSWORD_SIGN_IN = env_bool("TB_PASSWORD_SIGN_IN", True)
TB_BREAK_GLASS_USERS = env_list("TB_BREAK_GLASS_USERS")
TB_OIDC_ISSUER = env_str("TB_OIDC_ISSUER").rstrip("/")
OIDC_RP_CLIENT_ID = env_str("TB_OIDC_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_str("TB_OIDC_CLIENT_SECRET")
OIDC_RP_SCOPES = env_str("TB_OIDC_SCOPES", "openid email profile groups")
OIDC_RP_SIGN_ALGO = env_str("TB_OIDC_SIGN_ALGO", "RS256")
# Endpoints come from the issuer's discovery document (identity/oidc.py); these override it.
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("TB_OIDC_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("TB_OIDC_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("TB_OIDC_USERINFO_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("TB_OIDC_JWKS_ENDPOINT")
TB_OIDC_END_SESSION_ENDPOINT = env_str("TB_OIDC_END_SESSION_ENDPOINT")
TB_OIDC_LINK_CLAIM = env_str("TB_OIDC_LINK_CLAIM", "email")
TB_OIDC_LINK_FIELD = env_choice("TB_OIDC_LINK_FIELD", "email", ("email", "employee_id"))
TB_OIDC_GROUPS_CLAIM = env_str("TB_OIDC_GROUPS_CLAIM", "groups")
TB_OIDC_ADMIN_GROUPS = env_list("TB_OIDC_ADMIN_GROUPS")
TB_OIDC_FINANCE_GROUPS = env_list("TB_OIDC_FINANCE_GROUPS")
TB_OIDC_MANAGER_GROUPS = env_list("TB_OIDC_MANAGER_GROUPS")
OIDC_USE_PKCE = True
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_STORE_ID_TOKEN = True  # the id_token_hint of the IdP sign-out
OIDC_TIMEOUT = env_int("TB_OIDC_TIMEOUT_SECONDS", 10, minimum=1, maximum=120)
OIDC_OP_LOGOUT_URL_METHOD = "identity.oidc.logout_url"
OIDC_AUTHENTICATE_CLASS = "identity.oidc.SignInStart"
OIDC_CALLBACK_CLASS = "identity.oidc.SignInCallback"
LOGIN_REDIRECT_URL_FAILURE = "/sso/refused/"  # used as is by the library, not reversed
LOGOUT_REDIRECT_URL = "pages:login"
# SCIM: the enterprise-extension attribute that names the cost center, and its values mapped
# to cost-center codes ("Engineering=eng,Sales=sales"); a value not mapped is used as the code.
_SCIM_ATTRIBUTES = {"costcenter": "costCenter", "department": "department", "division": "division"}
TB_SCIM_COST_CENTER_ATTRIBUTE = _SCIM_ATTRIBUTES[
    env_choice("TB_SCIM_COST_CENTER_ATTRIBUTE", "costcenter", tuple(_SCIM_ATTRIBUTES))
]
TB_SCIM_COST_CENTER_MAP = env_list("TB_SCIM_COST_CENTER_MAP")
TB_SCIM_DEFAULT_COST_CENTER = env_str("TB_SCIM_DEFAULT_COST_CENTER")  # a joiner sent without one
TB_SCIM_MAX_RESULTS = env_int("TB_SCIM_MAX_RESULTS", 200, minimum=1, maximum=10_000)

# "json": one JSON object per line (with the request id of the call, if any) for log shippers.
TB_LOG_FORMAT = env_choice("TB_LOG_FORMAT", "text", ("text", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "metering.logs.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": TB_LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("TB_LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "uvicorn.access": {"level": "WARNING"}},
}
