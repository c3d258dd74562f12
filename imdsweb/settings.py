"""Django settings for imdsweb, read from the environment (django-environ).

Defaults work on a laptop with nothing configured: SQLite under ``var/`` and Redis on
localhost. With ``DJANGO_DEBUG`` off the settings are strict: a secret key is required and
cookies are secure.
"""

from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
env_file = BASE_DIR / ".env"
if env_file.exists():
    env.read_env(str(env_file))

DEBUG = env.bool("DJANGO_DEBUG", default=True)
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
    "fleet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
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

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
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
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": IMDSWEB_REDIS_URL,
                "KEY_PREFIX": "imdsweb"}
    if IMDSWEB_REDIS_URL
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(VAR_DIR / "cache")}
}
IMDSWEB_SUBMIT_TIMEOUT_SECONDS = env.int("IMDSWEB_SUBMIT_TIMEOUT_SECONDS", default=120)
IMDSWEB_RUNNER_BUDGET_SECONDS = env.float("IMDSWEB_RUNNER_BUDGET_SECONDS", default=20.0)
IMDSWEB_MAX_ERROR_ATTEMPTS = env.int("IMDSWEB_MAX_ERROR_ATTEMPTS", default=25)
IMDSWEB_SYNC_INTERVAL_MINUTES = env.int("IMDSWEB_SYNC_INTERVAL_MINUTES", default=15)
IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES = env.int("IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES", default=360)
IMDSWEB_USAGE_WINDOW_DAYS = env.int("IMDSWEB_USAGE_WINDOW_DAYS", default=14)
IMDSWEB_STALE_SYNC_MINUTES = env.int("IMDSWEB_STALE_SYNC_MINUTES", default=60)
IMDSWEB_TRACK_PENDING_SECONDS = env.float("IMDSWEB_TRACK_PENDING_SECONDS", default=10.0)
IMDSWEB_SWEEP_SECONDS = env.float("IMDSWEB_SWEEP_SECONDS", default=30.0)
IMDSWEB_PENDING_TIMEOUT_MINUTES = env.int("IMDSWEB_PENDING_TIMEOUT_MINUTES", default=30)
IMDSWEB_AWS_CONNECT_TIMEOUT = env.float("IMDSWEB_AWS_CONNECT_TIMEOUT", default=5.0)
IMDSWEB_AWS_READ_TIMEOUT = env.float("IMDSWEB_AWS_READ_TIMEOUT", default=30.0)
IMDSWEB_AWS_MAX_ATTEMPTS = env.int("IMDSWEB_AWS_MAX_ATTEMPTS", default=5)
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
# Share of AWS's refill rate imdsweb uses. AWS's buckets are shared with every other caller in the
# account, and network jitter bunches calls up: pacing at exactly AWS's rate gets throttled.
IMDSWEB_RATE_HEADROOM = env.float("IMDSWEB_RATE_HEADROOM", default=0.96)

CELERY_BEAT_SCHEDULE = {
    "sync-fleet": {
        "task": "fleet.tasks.sync_all",
        "schedule": timedelta(minutes=IMDSWEB_SYNC_INTERVAL_MINUTES),
    },
    "sync-imdsv1-usage": {
        "task": "fleet.tasks.sync_usage_all",
        "schedule": timedelta(minutes=IMDSWEB_USAGE_SYNC_INTERVAL_MINUTES),
    },
    "refresh-posture": {
        "task": "fleet.tasks.refresh_posture",
        "schedule": timedelta(minutes=5),
    },
    "track-pending": {
        "task": "fleet.tasks.track_pending",
        "schedule": timedelta(seconds=IMDSWEB_TRACK_PENDING_SECONDS),
    },
    "sweep-changes": {
        "task": "fleet.tasks.sweep",
        "schedule": timedelta(seconds=IMDSWEB_SWEEP_SECONDS),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"botocore": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}
