"""supersede=True: a call not yet started takes a later call's place, and
holds that call's payload."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_q_signals", "0006_run_records"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxcall",
            name="payload_of",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="supersede: the later call whose place it took, and "
                "whose payload it holds.",
                null=True,
                verbose_name="holds call",
            ),
        ),
    ]
