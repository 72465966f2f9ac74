"""Settings for the benchmark: SQLite or PostgreSQL, the ORM broker or Redis.

``BENCH_DB`` is the SQLite file, in WAL mode unless ``BENCH_JOURNAL`` is
``delete`` (SQLite's default); ``QSIGNALS_DATABASE_URL`` switches to
PostgreSQL, and ``QSIGNALS_REDIS_URL`` to Redis.
"""

import os
from urllib.parse import urlsplit

SECRET_KEY = "django-q-signals-bench"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django_q", "django_q_signals", "bench"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB", "bench.sqlite3"),
        "OPTIONS": {"timeout": 60, "transaction_mode": "IMMEDIATE"},
    }
}
if os.environ.get("BENCH_JOURNAL", "WAL") == "WAL":
    DATABASES["default"]["OPTIONS"]["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
if os.environ.get("QSIGNALS_DATABASE_URL"):
    _url = urlsplit(os.environ["QSIGNALS_DATABASE_URL"])
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _url.hostname,
        "PORT": _url.port or 5432,
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "NAME": _url.path.lstrip("/"),
    }

Q_CLUSTER = {
    "name": "bench",
    "workers": 2,
    "timeout": 300,
    "retry": 600,
    "poll": 0.05,
    "bulk": 50,
    "save_limit": -1,  # measure the handlers, not Django Q2 saving results
    "catch_up": False,
    "log_level": "WARNING",
}
if os.environ.get("QSIGNALS_REDIS_URL"):
    Q_CLUSTER["redis"] = os.environ["QSIGNALS_REDIS_URL"]
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "django-q": {"level": "WARNING"},
        "django_q_signals": {"level": "WARNING"},
    },
}
