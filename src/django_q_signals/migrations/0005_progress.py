"""progress(): how far a call's handler is, on its row."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_q_signals', '0004_ordered_calls'),
    ]

    operations = [
        migrations.AddField(
            model_name='outboxcall',
            name='progress_done',
            field=models.FloatField(blank=True, help_text='How far its handler is, as it said.', null=True),
        ),
        migrations.AddField(
            model_name='outboxcall',
            name='progress_note',
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name='outboxcall',
            name='progress_total',
            field=models.FloatField(blank=True, help_text='Out of how much, if it said.', null=True),
        ),
    ]
