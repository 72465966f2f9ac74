"""Settings for the test suite.

By default SQLite and Django Q2's ORM broker. With ``QSIGNALS_DATABASE_URL``
(``postgres://user@host:port/name``) the databases are PostgreSQL, with
``QSIGNALS_MYSQL_URL`` (``mysql://user@host:port/name``) MySQL or MariaDB, and
with ``QSIGNALS_REDIS_URL`` the broker is Redis (a database the tests empty).
``nox -s tests`` runs the suite on SQLite, then on PostgreSQL with Redis where
both of theirs are set, then on MySQL or MariaDB with the ORM broker where its
variable is set. Nothing else in the environment (a ``DATABASE_URL`` or
``REDIS_URL`` of another project) is read.
"""

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SECRET_KEY = "django-q-signals-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.messages",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "django_q",
    "django_q_signals",
    "tests",
]

# The admin, for the outbox's admin tests.
ROOT_URLCONF = "tests.urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"
# Fast, for the admin tests' logins.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A worker process started by a test gets the test databases' names in
# QSIGNALS_TEST_DB and QSIGNALS_TEST_DB_OTHER, so it uses what the test does.
_test_db = Path(tempfile.gettempdir()) / f"django-q-signals-{os.getpid()}.sqlite3"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": str(_test_db)},
    },
    "other": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": str(_test_db.with_suffix(".other.sqlite3"))},
    },
}

QSIGNALS_DATABASE_URL = os.environ.get("QSIGNALS_DATABASE_URL") or None
QSIGNALS_MYSQL_URL = os.environ.get("QSIGNALS_MYSQL_URL") or None
if QSIGNALS_DATABASE_URL and QSIGNALS_MYSQL_URL:
    raise ValueError(
        "Set QSIGNALS_DATABASE_URL (PostgreSQL) or QSIGNALS_MYSQL_URL (MySQL or "
        "MariaDB), not both: the tests run on one of them at a time."
    )
for _url_text, _engine, _port, _user in (
    (QSIGNALS_DATABASE_URL, "django.db.backends.postgresql", 5432, "postgres"),
    (QSIGNALS_MYSQL_URL, "django.db.backends.mysql", 3306, "root"),
):
    if not _url_text:
        continue
    _url = urlsplit(_url_text)
    _name = _url.path.lstrip("/")
    for _alias, _suffix in (("default", ""), ("other", "_other")):
        DATABASES[_alias] = {
            "ENGINE": _engine,
            "HOST": _url.hostname or "127.0.0.1",
            "PORT": _url.port or _port,
            "USER": _url.username or _user,
            "PASSWORD": _url.password or "",
            "NAME": _name + _suffix,
            # The server's default collation: on MySQL and MariaDB it compares
            # text without case, as most of their users' databases do.
            "TEST": {"NAME": f"test_{_name}{_suffix}"},
        }
for _alias, _variable in (
    ("default", "QSIGNALS_TEST_DB"),
    ("other", "QSIGNALS_TEST_DB_OTHER"),
):
    if _variable in os.environ:
        DATABASES[_alias]["NAME"] = os.environ[_variable]

# Writes to the models in tests.routers.OTHER_MODELS go to "other".
DATABASE_ROUTERS = ["tests.routers.Router"]

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
QSIGNALS_REDIS_URL = os.environ.get("QSIGNALS_REDIS_URL") or None
if QSIGNALS_REDIS_URL:
    del Q_CLUSTER["orm"]
    Q_CLUSTER["redis"] = QSIGNALS_REDIS_URL
if os.environ.get("QSIGNALS_ORM_BROKER"):
    # A worker started by a test that puts the ORM broker on another alias.
    Q_CLUSTER.pop("redis", None)
    Q_CLUSTER["orm"] = os.environ["QSIGNALS_ORM_BROKER"]
if os.environ.get("QSIGNALS_RELAY_AFTER"):
    # A worker of the outbox reliability tests: the relay waits this long.
    Q_SIGNALS = {"OUTBOX_RELAY_AFTER": float(os.environ["QSIGNALS_RELAY_AFTER"])}
if os.environ.get("QSIGNALS_RETRY"):
    # A worker the reliability suite kills: the tasks it had taken come back
    # after this many seconds instead of a minute (retry must exceed timeout).
    Q_CLUSTER["retry"] = int(os.environ["QSIGNALS_RETRY"])
    Q_CLUSTER["timeout"] = int(os.environ["QSIGNALS_RETRY"]) - 1

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # A qcluster's output names each record's level and logger, so a test can
    # tell an ERROR from a WARNING there.
    "formatters": {"levelled": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "levelled",
            "level": "WARNING",
        }
    },
    "loggers": {
        "django-q": {"handlers": ["console"], "level": "WARNING"},
        "django_q_signals": {"handlers": ["console"], "level": "DEBUG"},
    },
}
