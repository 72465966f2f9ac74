"""Sign the calls written before outbox rows were signed: the relay refuses
a row whose signature does not verify."""

from typing import Any

from django.db import migrations

from django_q_signals._outbox import is_signed, signed


def sign_payloads(apps: Any, schema_editor: Any) -> None:
    OutboxCall = apps.get_model("django_q_signals", "OutboxCall")
    rows = OutboxCall.objects.using(schema_editor.connection.alias)
    for pk, payload in rows.values_list("pk", "payload").iterator():
        if not is_signed(bytes(payload)):
            rows.filter(pk=pk).update(payload=signed(bytes(payload)))


class Migration(migrations.Migration):
    dependencies = [("django_q_signals", "0002_relay_schedule")]

    operations = [migrations.RunPython(sign_payloads, migrations.RunPython.noop)]
