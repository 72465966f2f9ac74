"""Settings for the test suite: SQLite and Django Q2's ORM broker."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "django-q-signals-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_q",
    "django_q_signals",
    "tests",
]

# A worker process started by a test gets the test database's file name in
# QSIGNALS_TEST_DB, so it reads and writes what the test does.
_test_db = Path(tempfile.gettempdir()) / f"django-q-signals-{os.getpid()}.sqlite3"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("QSIGNALS_TEST_DB", ":memory:"),
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": str(_test_db)},
    },
    "other": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("QSIGNALS_TEST_DB_OTHER", ":memory:"),
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": str(_test_db.with_suffix(".other.sqlite3"))},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

Q_CLUSTER = {
    "name": "tests",
    "orm": "default",
    "workers": 2,
    "timeout": 30,
    "retry": 60,
    "poll": 0.05,
    "catch_up": False,
    "save_limit": 0,
    "ack_failures": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django-q": {"handlers": ["console"], "level": "WARNING"},
        "django_q_signals": {"level": "DEBUG"},
    },
}
