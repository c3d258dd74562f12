"""Django settings for imdsweb, read from the environment (django-environ).

Defaults work on a laptop with nothing configured: SQLite under ``var/`` and Redis on
localhost. With ``DJANGO_DEBUG`` off the settings are strict: a secret key is required and
cookies are secure.
"""

from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
env_file = BASE_DIR / ".env"
if env_file.exists():
    env.read_env(str(env_file))

DEBUG = env.bool("DJANGO_DEBUG", default=True)
# Django's technical 404 and 500 pages under DEBUG (for development); the demo turns them off so
# that its users meet the product's own pages (fleet.views.errors.ProductErrorPagesMiddleware).
IMDSWEB_DEBUG_ERROR_PAGES = env.bool("IMDSWEB_DEBUG_ERROR_PAGES", default=DEBUG)
if DEBUG:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="insecure-dev-key-do-not-use-in-production")
else:
    # No default: a production deployment without a secret key must not start.
    SECRET_KEY = env.str("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_tables2",
    "django_filters",
    "django_htmx",
    "rest_framework",
    "drf_spectacular",
    "axes",  # sign-in throttling (issue 17)
    "mozilla_django_oidc",  # single sign-on (issue 17)
    "fleet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",  # before whitenoise: static files get the policy too
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # The product's 404/500 pages under DEBUG when IMDSWEB_DEBUG_ERROR_PAGES is off (the demo).
    "fleet.views.errors.ProductErrorPagesMiddleware",
    "fleet.signin.SessionTimeoutMiddleware",
    "fleet.profile.UserTimezoneMiddleware",  # the user's own time zone (UTC by default)
    "fleet.signin.PrivateCacheMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "imdsweb.urls"
WSGI_APPLICATION = "imdsweb.wsgi.application"

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

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'imdsweb.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DJANGO_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share the file: wait for locks instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Tests use a file too (beside the configured one), not Django's shared-cache in-memory
    # database: its table locks fail at once instead of waiting like the real file's.
    _name = Path(str(DATABASES["default"]["NAME"]))
    DATABASES["default"]["TEST"] = {"NAME": str(_name.with_name(f"test-{_name.stem}{_name.suffix}"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "fleet:overview"
LOGOUT_REDIRECT_URL = "login"

# --- sign-in and hardening (issue 17): local logins, single sign-on, throttling, sessions, CSP ---
# Local (username + password) logins; off = single sign-on only (the admin site included).
IMDSWEB_LOCAL_LOGIN = env.bool("IMDSWEB_LOCAL_LOGIN", default=True)
# OpenID Connect: set the issuer to turn single sign-on on. Endpoints come from the issuer's
# discovery document (fleet/signin.py), so one URL configures Okta, Entra ID, Google or Keycloak.
IMDSWEB_OIDC_ISSUER = env.str("IMDSWEB_OIDC_ISSUER", default="").rstrip("/")
IMDSWEB_OIDC_PROVIDER_NAME = env.str("IMDSWEB_OIDC_PROVIDER_NAME", default="single sign-on")
IMDSWEB_OIDC_USERNAME_CLAIM = env.str("IMDSWEB_OIDC_USERNAME_CLAIM", default="preferred_username")
IMDSWEB_OIDC_GROUPS_CLAIM = env.str("IMDSWEB_OIDC_GROUPS_CLAIM", default="groups")
# Provider group names (or ids, as Entra ID sends them) per role; the highest role matched wins.
IMDSWEB_OIDC_ROLE_GROUPS = {
    "admin": env.list("IMDSWEB_OIDC_ADMIN_GROUPS", default=["imdsweb-admin"]),
    "operator": env.list("IMDSWEB_OIDC_OPERATOR_GROUPS", default=["imdsweb-operator"]),
    "viewer": env.list("IMDSWEB_OIDC_VIEWER_GROUPS", default=["imdsweb-viewer"]),
}
OIDC_RP_CLIENT_ID = env.str("IMDSWEB_OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("IMDSWEB_OIDC_CLIENT_SECRET", default="")
OIDC_RP_SCOPES = env.str("IMDSWEB_OIDC_SCOPES", default="openid email profile")
OIDC_RP_SIGN_ALGO = env.str("IMDSWEB_OIDC_SIGN_ALGO", default="RS256")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = env.float("IMDSWEB_OIDC_TIMEOUT", default=10.0)
# Filled from the discovery document on first use (fleet.signin.discovery); placeholders here.
OIDC_OP_AUTHORIZATION_ENDPOINT = OIDC_OP_TOKEN_ENDPOINT = OIDC_OP_USER_ENDPOINT = OIDC_OP_JWKS_ENDPOINT = ""
OIDC_AUTHENTICATE_CLASS = "fleet.signin.OidcSignInView"
OIDC_CALLBACK_CLASS = "fleet.signin.OidcCallbackView"

AUTHENTICATION_BACKENDS = [
    # First: a locked-out username or address is refused before any password is hashed.
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend, with concurrent attempts for one username or address checked in turn.
    *(["fleet.signin.OneCheckAtATimeBackend"] if IMDSWEB_LOCAL_LOGIN else []),
    *(["fleet.signin.OidcBackend"] if IMDSWEB_OIDC_ISSUER else []),
]

# django-axes: failures counted per username and, separately, per client address.
AXES_FAILURE_LIMIT = env.int("IMDSWEB_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("IMDSWEB_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_LOCKOUT_CALLABLE = "fleet.signin.lockout_response"
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_ACCESS_FAILURE_LOG_PER_USER_LIMIT = 200
# An attempt during a lockout is refused with reads only (axes would otherwise rewrite and commit
# the attempt row, appending the request to it, at every refused attempt of a flood); it is
# logged by fleet.signin, and the lockout itself is in the admin (Access attempts / failures).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A refused attempt is answered after this pause (a tarpit, with no CPU used meanwhile): a flood
# then runs at about one attempt per connection per second instead of as fast as the server can
# refuse. Needs threaded workers (gunicorn --threads, as compose and the demo run it).
IMDSWEB_LOCKOUT_DELAY_SECONDS = env.float("IMDSWEB_LOCKOUT_DELAY_SECONDS", default=1.0)
# Behind N reverse proxies, the client is the N-th address from the right of X-Forwarded-For.
# 0 (default): the connection's address; never trust the header without a proxy that sets it.
IMDSWEB_PROXY_COUNT = env.int("IMDSWEB_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "fleet.signin.client_address"

# Sessions end after this long without a request (an idle timeout) and, active or not, this
# long after signing in.
IMDSWEB_SESSION_IDLE_MINUTES = env.int("IMDSWEB_SESSION_IDLE_MINUTES", default=8 * 60)
IMDSWEB_SESSION_MAX_HOURS = env.int("IMDSWEB_SESSION_MAX_HOURS", default=24)
SESSION_COOKIE_AGE = IMDSWEB_SESSION_IDLE_MINUTES * 60
# The idle expiry is pushed back (one session write) at most this often.
IMDSWEB_SESSION_TOUCH_SECONDS = env.int("IMDSWEB_SESSION_TOUCH_SECONDS", default=60)

# Email: the password-reset pages exist only when mail can be sent (EMAIL_URL, e.g. smtp+tls://...).
# One mail configuration for both (and for notifications, below): EMAIL_URL, or its older name
# IMDSWEB_EMAIL_URL.
IMDSWEB_EMAIL_CONFIGURED = bool(env.str("EMAIL_URL", default="") or env.str("IMDSWEB_EMAIL_URL", default=""))

# Content-Security-Policy (django-csp; Django 5.2 has none of its own): everything from here.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'none'"],
        "object-src": ["'none'"],
    },
}
# --- end of sign-in and hardening ---

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
# One date format with the time zone on every page (imdsweb/formats/en/formats.py).
FORMAT_MODULE_PATH = ["imdsweb.formats"]
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Security headers everywhere; transport security only when not debugging.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery (configured from these settings through the CELERY_ namespace) ---
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fix-up closes the database connections before and after every task unless this
# is set, and at AWS's rate a worker runs tens of short tasks a second: a new PostgreSQL connection
# each time (a backend forked, authenticated and set up, unseen by anything that samples the
# database's processes) cost more CPU than the task. With it the fix-up closes them only every two
# million tasks; fleet.tasks closes them around each task when they are unusable or older than
# CONN_MAX_AGE, as Django does around a web request (with its health check on reuse).
CELERY_DB_REUSE_MAX = 1_000_000
# Publishing must not hang a web request when the broker is down: the rows are the
# source of truth and the sweeper re-dispatches what was never published.
CELERY_BROKER_TRANSPORT_OPTIONS = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport: the embedded demo's broker when no Redis is around.
    BROKER_DIR = VAR_DIR / "broker"
    (BROKER_DIR / "queue").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "store_processed": False,
    }

# --- imdsweb ---
# Redis used for the shared AWS rate-limit buckets and the sync locks.
IMDSWEB_REDIS_URL = env.str("IMDSWEB_REDIS_URL", default="redis://127.0.0.1:6379/1")
# Shared state between workers: the runner lock per account/region. Redis when configured,
# else a file cache (the embedded demo runs a single worker).
CACHES = {
    "default": {"BACKEND": "imdsweb.cache.RedisCache", "LOCATION": IMDSWEB_REDIS_URL,
                "KEY_PREFIX": "imdsweb"}
    if IMDSWEB_REDIS_URL
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(VAR_DIR / "cache")}
}
IMDSWEB_SUBMIT_TIMEOUT_SECONDS = env.int("IMDSWEB_SUBMIT_TIMEOUT_SECONDS", default=120)
# The change engine's runner (fleet.engine.runner): a run of one account/region yields its worker
# after this long and queues itself again behind the other regions' runners (a burst of one
# region must not keep another's full bucket waiting); it reads, takes tokens for and claims up to
# this many items at once (each answer still has its own commit) and, once the burst is spent,
# waits for this much of AWS's refill before it runs again rather than running for every token.
# A batch's first run in a region may send this much of AWS's refill after its DryRun preflight
# (the cover), so the region's bucket keeps refilling while every other region's first run makes
# its preflight. One second by default (five items at AWS's rate): without it the batch's later
# regions wait with a full bucket; on 2 cores short of CPU two seconds' cover made P5b's 16 point
# slower (see docs/benchmarks.md).
IMDSWEB_RUNNER_BUDGET_SECONDS = env.float("IMDSWEB_RUNNER_BUDGET_SECONDS", default=0.2)
IMDSWEB_RUNNER_CHUNK = env.int("IMDSWEB_RUNNER_CHUNK", default=50)
IMDSWEB_RUNNER_GATHER_SECONDS = env.float("IMDSWEB_RUNNER_GATHER_SECONDS", default=2.0)
IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = env.float("IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS", default=1.0)
IMDSWEB_MAX_ERROR_ATTEMPTS = env.int("IMDSWEB_MAX_ERROR_ATTEMPTS", default=25)
IMDSWEB_SYNC_INTERVAL_MINUTES = env.int("IMDSWEB_SYNC_INTERVAL_MINUTES", default=15)
IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES = env.int("IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES", default=360)
IMDSWEB_USAGE_WINDOW_DAYS = env.int("IMDSWEB_USAGE_WINDOW_DAYS", default=14)
# The tag naming an instance's owning team: its own column in the instance list and the
# overview's "posture by team" (fleet.teams). Tag keys are case-sensitive in AWS.
IMDSWEB_OWNER_TAG = env.str("IMDSWEB_OWNER_TAG", default="Team")
# A usage reading older than this is no evidence: the readiness gate holds such instances.
IMDSWEB_USAGE_STALE_MINUTES = env.int(
    "IMDSWEB_USAGE_STALE_MINUTES", default=2 * IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES
)
# The longest a waiver may run (its expiry date at most this many days ahead); extending counts from today.
IMDSWEB_WAIVER_MAX_DAYS = env.int("IMDSWEB_WAIVER_MAX_DAYS", default=365)
IMDSWEB_DISCOVERY_INTERVAL_MINUTES = env.int("IMDSWEB_DISCOVERY_INTERVAL_MINUTES", default=1440)
IMDSWEB_HEALTH_INTERVAL_MINUTES = env.int("IMDSWEB_HEALTH_INTERVAL_MINUTES", default=60)
IMDSWEB_STALE_SYNC_MINUTES = env.int("IMDSWEB_STALE_SYNC_MINUTES", default=60)
# The beat's tracking round over every region with pending items: the safety net. A region's own
# rounds run IMDSWEB_TRACK_FAST_SECONDS after a submit AWS answered pending, and as often while
# changes are pending on running instances; items on stopped instances are checked every
# IMDSWEB_TRACK_STOPPED_SECONDS.
IMDSWEB_TRACK_PENDING_SECONDS = env.float("IMDSWEB_TRACK_PENDING_SECONDS", default=10.0)
IMDSWEB_TRACK_FAST_SECONDS = env.float("IMDSWEB_TRACK_FAST_SECONDS", default=1.0)
IMDSWEB_TRACK_STOPPED_SECONDS = env.float("IMDSWEB_TRACK_STOPPED_SECONDS", default=60.0)
# While a region's runner still has changes queued, its rounds come up to this many seconds apart
# (as long as AWS's refill takes to let it send them): fewer rounds, each describing more changes.
# Off (0) by default: it breaks the promise that a change is seen applied within about 2 s.
IMDSWEB_TRACK_SENDING_SECONDS = env.float("IMDSWEB_TRACK_SENDING_SECONDS", default=0.0)
# What the confirmation page's time estimate assumes (fleet.changes.planning.estimate_seconds):
# one ModifyInstanceMetadataOptions round trip, and AWS's pending -> applied on a running instance.
IMDSWEB_ESTIMATE_CALL_SECONDS = env.float("IMDSWEB_ESTIMATE_CALL_SECONDS", default=0.15)
IMDSWEB_ESTIMATE_APPLY_SECONDS = env.float("IMDSWEB_ESTIMATE_APPLY_SECONDS", default=5.0)
# Items queued and no worker has taken work for this long: the pages say the engine is stalled.
IMDSWEB_WORKER_STALL_SECONDS = env.float("IMDSWEB_WORKER_STALL_SECONDS", default=60.0)
IMDSWEB_SWEEP_SECONDS = env.float("IMDSWEB_SWEEP_SECONDS", default=30.0)
IMDSWEB_PENDING_TIMEOUT_MINUTES = env.int("IMDSWEB_PENDING_TIMEOUT_MINUTES", default=30)
IMDSWEB_AWS_CONNECT_TIMEOUT = env.float("IMDSWEB_AWS_CONNECT_TIMEOUT", default=5.0)
IMDSWEB_AWS_READ_TIMEOUT = env.float("IMDSWEB_AWS_READ_TIMEOUT", default=30.0)
IMDSWEB_AWS_MAX_ATTEMPTS = env.int("IMDSWEB_AWS_MAX_ATTEMPTS", default=5)
# boto3 clients a process keeps (least recently used dropped first); about 0.8 MB each.
IMDSWEB_AWS_CLIENT_CACHE_SIZE = env.int("IMDSWEB_AWS_CLIENT_CACHE_SIZE", default=512)
# AWS EC2 token buckets (size, refill per second) per account/region/action; see AWS-FACTS.
IMDSWEB_RATE_LIMITS = {
    "ModifyInstanceMetadataOptions": (
        env.int("IMDSWEB_RATE_MODIFY_BUCKET", default=100),
        env.float("IMDSWEB_RATE_MODIFY_REFILL", default=5.0),
    ),
    "ModifyInstanceMetadataDefaults": (2, 2.0),
    "DescribeInstances": (100, 20.0),
    "GetInstanceMetadataDefaults": (50, 10.0),
    "DescribeLaunchTemplates": (100, 20.0),
    "DescribeLaunchTemplateVersions": (100, 20.0),
    "DescribeImages": (100, 20.0),
    "CreateLaunchTemplateVersion": (50, 5.0),
    "ModifyLaunchTemplate": (50, 5.0),
    # Auto Scaling's own API; AWS does not publish its buckets: stay well under what it tolerates.
    "DescribeAutoScalingGroups": (20, 5.0),
    "DescribeLaunchConfigurations": (20, 5.0),
    "UpdateAutoScalingGroup": (10, 2.0),
}
# Multiplies every refill rate: set it to the simulator's --time-scale.
IMDSWEB_RATE_TIME_SCALE = env.float("IMDSWEB_RATE_TIME_SCALE", default=1.0)
# The most of AWS's refill rate imdsweb paces at. 1.0: all of it, when nobody else spends the
# bucket; fleet/ratelimit.py learns a lower rate from AWS's throttling answers when someone does.
IMDSWEB_RATE_HEADROOM = env.float("IMDSWEB_RATE_HEADROOM", default=1.0)
# Instances per chunk when a worker expands a large selection into items (fleet/changes/expansion.py).
IMDSWEB_EXPANSION_CHUNK = env.int("IMDSWEB_EXPANSION_CHUNK", default=20_000)

# --- history, drift, notifications, metrics (issue 18: fleet/history.py, notify.py, metrics.py) ---
# Staged rollouts, windows and approval (fleet.changes.rollout): the beat's tick, the soak's
# clock (tests shorten it like the simulator's time scale), and the four-eyes rule: batches of at
# least IMDSWEB_APPROVAL_MIN_ITEMS instances (0: no size rule), or touching these account ids,
# names or OU ids, wait for a second person's approval, for at most IMDSWEB_APPROVAL_EXPIRY_HOURS.
IMDSWEB_ROLLOUT_TICK_SECONDS = env.float("IMDSWEB_ROLLOUT_TICK_SECONDS", default=10.0)
IMDSWEB_ROLLOUT_TIME_SCALE = env.float("IMDSWEB_ROLLOUT_TIME_SCALE", default=IMDSWEB_RATE_TIME_SCALE)
IMDSWEB_APPROVAL_MIN_ITEMS = env.int("IMDSWEB_APPROVAL_MIN_ITEMS", default=0)
IMDSWEB_APPROVAL_ACCOUNTS = env.list("IMDSWEB_APPROVAL_ACCOUNTS", default=[])
IMDSWEB_APPROVAL_EXPIRY_HOURS = env.float("IMDSWEB_APPROVAL_EXPIRY_HOURS", default=72.0)
IMDSWEB_HISTORY_RETENTION_DAYS = env.int("IMDSWEB_HISTORY_RETENTION_DAYS", default=400)
IMDSWEB_HISTORY_HOURLY_DAYS = env.int("IMDSWEB_HISTORY_HOURLY_DAYS", default=7)
# Sync and discovery runs older than this are deleted by prune_history (96 sync runs a day per
# account/region at the default interval); the latest run of each outcome is always kept.
IMDSWEB_RUN_RETENTION_DAYS = env.int("IMDSWEB_RUN_RETENTION_DAYS", default=14)
# Outgoing mail for notification rules: django-environ's EMAIL_URL (smtp://user:pass@host:587,
# submission://… for STARTTLS, smtp+ssl://…); unset prints mail to the worker's log.
_email = env.email_url("EMAIL_URL", default=env.str("IMDSWEB_EMAIL_URL", default="consolemail://"))
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _email["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = env.str("IMDSWEB_EMAIL_FROM", default=env.str("DEFAULT_FROM_EMAIL", default="imdsweb@localhost"))
# Links in notifications point here.
IMDSWEB_BASE_URL = env.str("IMDSWEB_BASE_URL", default="http://127.0.0.1:8000")
IMDSWEB_NOTIFY_SCAN_SECONDS = env.float("IMDSWEB_NOTIFY_SCAN_SECONDS", default=60.0)
IMDSWEB_NOTIFY_MAX_RETRIES = env.int("IMDSWEB_NOTIFY_MAX_RETRIES", default=5)
# /metrics: a bearer token, and/or the addresses (CIDRs) allowed without one.
IMDSWEB_METRICS_TOKEN = env.str("IMDSWEB_METRICS_TOKEN", default="")
IMDSWEB_METRICS_ALLOW = env.list("IMDSWEB_METRICS_ALLOW", default=["127.0.0.1/32", "::1/128"])
# The JSON API (fleet/api): token or session, JSON only, the OpenAPI schema from drf-spectacular.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "imdsweb API",
    "DESCRIPTION": "The IMDS posture of an EC2 fleet: instances, posture and its history, defaults, drift, changes.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # One schema name per enumeration of fleet.choices, wherever a field uses it.
    "ENUM_NAME_OVERRIDES": {
        name: f"fleet.choices.{name}"
        for name in ("HttpTokens", "Toggle", "MetadataState", "InstanceState", "DefaultsHttpTokens", "DefaultsToggle",
                     "ManagedBy", "DefaultsStatus", "ChangeKind", "ItemState", "DriftKind", "RolloutState", "ApprovalState",
                     "WaveMode")
    },
}
# --- end issue 18 ---

CELERY_BEAT_SCHEDULE = {
    "sync-fleet": {
        "task": "fleet.tasks.sync_all",
        "schedule": timedelta(minutes=IMDSWEB_SYNC_INTERVAL_MINUTES),
    },
    "sync-imdsv1-usage": {
        "task": "fleet.tasks.sync_usage_all",
        "schedule": timedelta(minutes=IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES),
    },
    "discover-organizations": {
        "task": "fleet.tasks.discover_organizations",
        "schedule": timedelta(minutes=IMDSWEB_DISCOVERY_INTERVAL_MINUTES),
    },
    "check-account-health": {
        "task": "fleet.tasks.check_health_all",
        "schedule": timedelta(minutes=IMDSWEB_HEALTH_INTERVAL_MINUTES),
    },
    "refresh-posture": {
        "task": "fleet.tasks.refresh_posture",
        "schedule": timedelta(minutes=5),
    },
    "track-pending": {
        "task": "fleet.tasks.track_pending",
        "schedule": timedelta(seconds=IMDSWEB_TRACK_PENDING_SECONDS),
    },
    "advance-rollouts": {
        "task": "fleet.tasks.advance_rollouts",
        "schedule": timedelta(seconds=IMDSWEB_ROLLOUT_TICK_SECONDS),
    },
    "sweep-changes": {
        "task": "fleet.tasks.sweep",
        "schedule": timedelta(seconds=IMDSWEB_SWEEP_SECONDS),
    },
    # issue 18: history and notifications
    "snapshot-posture": {"task": "fleet.tasks.snapshot_posture", "schedule": crontab(minute=0)},
    "prune-history": {"task": "fleet.tasks.prune_history", "schedule": crontab(hour=3, minute=17)},
    # Waivers past their date: audit, notification, summaries within a minute (fleet.waivers).
    "expire-waivers": {"task": "fleet.tasks.expire_waivers", "schedule": timedelta(seconds=60)},
    "notify": {"task": "fleet.tasks.notify", "schedule": timedelta(seconds=IMDSWEB_NOTIFY_SCAN_SECONDS)},
}

# One handler, on the root logger. Django's own "django" logger handlers (a second console in
# DEBUG, mail_admins) are dropped: with them every django.request line was printed twice.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"client_error_without_traceback": {"()": "imdsweb.log_filters.ClientErrorWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"filters": ["client_error_without_traceback"]},
        "botocore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}
