"""ordered=True: the waiting state, and an index on a row's calls of one
receiver in the order they were written."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_q_signals", "0003_sign_payloads"),
    ]

    operations = [
        migrations.AlterField(
            model_name="outboxcall",
            name="state",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("sent", "Sent"),
                    ("running", "Running"),
                    ("failed", "Failed"),
                    ("waiting", "Waiting"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.AddIndex(
            model_name="outboxcall",
            index=models.Index(
                fields=["receiver", "model", "object_pk", "id"],
                name="qsignals_outbox_order",
            ),
        ),
    ]
