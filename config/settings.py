"""Django settings for Sluice.  Every value that depends on the environment comes from
``config.env.load_runtime()``; nothing here reads ``os.environ``."""

from __future__ import annotations

from config.env import (
    BASE_DIR,
    POSTGRES_DATABASE,
    POSTGRES_ROLE,
    PRODUCTION,
    TEST,
    load_runtime,
    use_private_umask,
)

SLUICE_RUNTIME = load_runtime()
use_private_umask()  # whatever this process writes under the state directory is owner-only
RUNTIME = SLUICE_RUNTIME

SECRET_KEY = RUNTIME.secret_key
DEBUG = RUNTIME.debug
ALLOWED_HOSTS = [*RUNTIME.public_hostnames, "localhost", "127.0.0.1", "[::1]"]
if RUNTIME.environment == TEST:
    ALLOWED_HOSTS.append("testserver")
# The platform's port, and this web node's own when it listens on another (sluice up --node).
_WEB_PORTS = dict.fromkeys((RUNTIME.ports.web, RUNTIME.listen.web))
CSRF_TRUSTED_ORIGINS = [f"https://{host}:{port}" for port in _WEB_PORTS for host in ALLOWED_HOSTS]

INSTALLED_APPS = [
    "config.console.SluiceAdminConfig",  # django.contrib.admin with the Sluice index
    "config.console.SluiceAuthConfig",  # django.contrib.auth, named in sentence case
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's and ReDoc's files, served from STATIC_ROOT: /api/docs/ needs no CDN.
    "drf_spectacular_sidecar",
    "tenants",
    "devices",
    "certs",
    "ingest",
]

MIDDLEWARE = [
    "config.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

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

ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"


# A database that does not answer fails a request (a 503, config.errors.DatabaseUnavailable)
# within this many seconds instead of holding it.
DATABASE_CONNECT_TIMEOUT = 5


def _database() -> dict[str, object]:
    if RUNTIME.database_url:
        import environ

        config: dict[str, object] = environ.Env.db_url_config(RUNTIME.database_url)
        if "postgresql" in str(config.get("ENGINE", "")):
            options = config.setdefault("OPTIONS", {})
            assert isinstance(options, dict)
            options.setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)
        return config
    if RUNTIME.starts_postgres:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": POSTGRES_DATABASE,
            "USER": POSTGRES_ROLE,
            "PASSWORD": RUNTIME.database_password,
            # The Unix socket in the state directory (psycopg takes a directory as the host).
            "HOST": str(RUNTIME.postgres_socket_dir),
            "PORT": str(RUNTIME.ports.postgres),
            "OPTIONS": {"connect_timeout": DATABASE_CONNECT_TIMEOUT},
            # As with SQLite below: the test stack's web and ingest processes and pytest share
            # one database, which pytest-django creates (the role may create databases only in
            # the test stack) and keeps (`sluice test` passes --reuse-db: it cannot drop a
            # database the web processes are still connected to).
            "TEST": {"NAME": POSTGRES_DATABASE} if RUNTIME.environment == TEST else {},
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": RUNTIME.sqlite_path,
        "OPTIONS": {
            # WAL lets the web workers read while Celery writes; IMMEDIATE avoids the
            # "database is locked" upgrade deadlock between concurrent writers.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # The test stack's web process (behind the real nginx) and pytest share one
        # database file, so end-to-end tests see what the tests committed.  Only the test
        # state directory ever holds it.
        "TEST": {"NAME": RUNTIME.sqlite_path} if RUNTIME.environment == TEST else {},
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = RUNTIME.static_root

# nginx proves it forwarded a request (and so that its client-certificate headers are its
# own) with this secret; anyone else reaching the app's socket cannot set them.
SLUICE_PROXY_SECRET = RUNTIME.proxy_secret

# Behind nginx, which terminates TLS on the only listener and always sets this header.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if RUNTIME.environment == PRODUCTION:
    SECURE_HSTS_SECONDS = 31536000

SLUICE_DEFAULT_PARTITIONS = RUNTIME.default_partitions
SLUICE_DEFAULT_REPLICATION_FACTOR = RUNTIME.default_replication_factor
# Bulk device import: rows per call, and the request body size that goes with it.
SLUICE_BULK_IMPORT_MAX_ROWS = 10_000
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 2**20

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "tenants.api_base.SluiceAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # JSON only, whatever Accept says: the spec documents JSON, and no operation answers 406.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "tenants.api_negotiation.IgnoreAcceptNegotiation",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sluice API",
    "DESCRIPTION": "Provisioning API of Sluice, the multi-tenant IoT-to-Kafka platform. Every error has one "
    'shape: {"error": {"code", "message", "fields": [{"pointer", "code", "message"}]}}; each operation lists '
    "the statuses it answers.",
    "VERSION": "0.2.0",
    # OpenAPI 3.1 (JSON Schema 2020-12): 3.0's schema object has no ``propertyNames``, so a
    # 3.0 document could not say that a label's name may not hold NUL (PostgreSQL cannot
    # store it), and a client generated from it would send one.
    "OAS_VERSION": "3.1.0",
    # The docs' JavaScript and CSS from the pinned drf-spectacular-sidecar, collected with
    # the console's static files: the page works offline and never loads "@latest".
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The document describes the API, not itself.
    "SERVE_INCLUDE_SCHEMA": False,
    # Inputs and outputs as separate components: inputs are closed objects, outputs are not.
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "TenantStatusEnum": "tenants.models.Tenant.Status",
        "StreamStatusEnum": "devices.models.Stream.Status",
        "DeviceStatusEnum": "devices.models.Device.Status",
        "CertificateStatusEnum": "certs.models.Certificate.Status",
        "CertificateAuthorityStatusEnum": "certs.models.CertificateAuthority.Status",
        "OAuthClientStatusEnum": "tenants.oauth.models.OAuthClient.Status",
    },
}

# Celery: Redis on loopback with a password (config.env).  Tasks are acknowledged after
# they ran, so a worker that dies mid-task leaves it for another.
CELERY_BROKER_URL = RUNTIME.redis_url(0)
CELERY_RESULT_BACKEND = RUNTIME.redis_url(0)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "beat-heartbeat": {"task": "sluice.heartbeat", "schedule": 10.0},
    "topics-reconcile": {"task": "devices.topics_reconcile", "schedule": 300.0},
    "acls-reconcile": {"task": "devices.acls_reconcile", "schedule": 300.0},
    # Each tenant consumer's lag for /metrics (ingest.observed.CONSUMER_LAG_SECONDS).
    "consumer-lag": {"task": "ingest.consumer_lag_refresh", "schedule": 30.0},
    "pki-rotate": {"task": "certs.pki_rotate", "schedule": 900.0},
    # Private keys an issuance job generated and nobody collected within a day (certs.jobs).
    "job-keys-purge": {"task": "certs.job_keys_purge", "schedule": 3600.0},
    # Hourly: a successor is published once the newest key is 30 days old, and a retired
    # key is deleted two hours after its successor started signing (tenants.oauth.keys).
    "oauth-signing-keys-rotate": {"task": "oauth.signing_keys_rotate", "schedule": 3600.0},
}
# Task modules outside INSTALLED_APPS' <app>.tasks, which autodiscovery does not find.
CELERY_IMPORTS = ("tenants.oauth.tasks",)

# JSON lines on stderr, which the launcher appends to <state>/logs/<process>.log (config.logs).
# uvicorn's own loggers are taken over too (it configured them with its plain format before
# Django was set up); Celery leaves logging to this (config.celery, setup_logging).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "config.logs.JsonFormatter"}},
    "filters": {"request_id": {"()": "config.logs.RequestIdFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        # uvicorn at the level its command line asks (the launcher: warning); Celery at INFO.
        **{
            name: {"handlers": ["console"], "level": "WARNING", "propagate": False}
            for name in ("uvicorn", "uvicorn.error")
        },
        **{
            name: {"handlers": ["console"], "level": "INFO", "propagate": False}
            for name in ("celery", "celery.app.trace")
        },
    },
}
