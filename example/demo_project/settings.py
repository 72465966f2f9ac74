"""Settings for the django-q-signals example project.

SQLite for the data and, through Django Q2's ORM broker, for the task queue
too: no Redis or other service is needed. ``demo.py`` points
``DEMO_DATABASE`` at a fresh file in a temporary directory for each run; a
plain ``python example/manage.py ...`` uses ``example/db.sqlite3``.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-q-signals-example-not-a-secret"  # any string will do here
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    # Users and their sessions: who may see a report's status fragment.
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_q",
    "django_q_signals",
    "shop",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "demo_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            # {% qsignals_status %} asks whether the request's user may see it.
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE", BASE_DIR / "db.sqlite3"),
        "OPTIONS": {
            # Two processes write to this file at once (the demo and the
            # worker): wait for locks instead of failing, take the write lock
            # when a transaction starts, and let readers read during writes.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

Q_CLUSTER = {
    "name": "demo",
    "orm": "default",  # the ORM broker: tasks are rows in this database
    "workers": 2,
    "timeout": 30,
    "retry": 60,  # must stay larger than timeout
    "max_attempts": 1,
    "ack_failures": True,  # a failed handler is reported at once, not retried
    "poll": 0.1,
    "log_level": "WARNING",
}

# Keep Django Q2's start/stop/processing chatter out of the demo output;
# warnings and errors (from Django Q2 or django-q-signals) still show.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django-q": {"level": "WARNING"},
        "django_q_signals": {"level": "WARNING"},
    },
}
