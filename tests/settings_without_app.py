"""The test settings of a project without ``django_q_signals`` in
INSTALLED_APPS, as every 0.x project is configured: everything but the
outbox, the checks and ``manage.py qsignals`` works the same."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django_q_signals"]
