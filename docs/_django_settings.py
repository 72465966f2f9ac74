"""The smallest Django settings that import django_q_signals, for autodoc."""

SECRET_KEY = "only-for-building-the-documentation"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_q",
    "django_q_signals",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
Q_CLUSTER = {"name": "docs", "orm": "default", "timeout": 60, "retry": 120}
USE_TZ = True
