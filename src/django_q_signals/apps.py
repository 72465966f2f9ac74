from django.apps import AppConfig, apps
from django.core import checks


class DjangoQSignalsConfig(AppConfig):
    name = "django_q_signals"
    verbose_name = "Django Q signals"

    def ready(self) -> None:
        from django_q_signals import checks as signal_checks

        checks.register(signal_checks.check_django_q_installed)
        checks.register(signal_checks.check_q_cluster)
        checks.register(signal_checks.check_settings)
        checks.register(signal_checks.check_retry_above_timeout)
        checks.register(signal_checks.check_receivers_importable)
        checks.register(signal_checks.check_relation_lookups)
        checks.register(signal_checks.check_previous_fields)
        checks.register(signal_checks.check_task_functions)
        if apps.is_installed("django_q"):
            from django_q.signals import pre_execute

            from django_q_signals import _relay

            # The relay must not count its own task as one still queued.
            pre_execute.connect(
                _relay.note_running_task, dispatch_uid="django_q_signals._relay"
            )
