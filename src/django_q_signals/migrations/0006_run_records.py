"""The run records: what the outbox receivers did in the last hour, for the
dashboard and ``manage.py qsignals --stats``."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_q_signals', '0005_progress'),
    ]

    operations = [
        migrations.CreateModel(
            name='RunRecord',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('receiver', models.CharField(help_text="The receiver's name: its dotted path.", max_length=255, verbose_name='handler')),
                ('ended', models.DateTimeField(db_index=True)),
                ('runs', models.PositiveIntegerField(help_text='Calls whose handler ran.')),
                ('failures', models.PositiveIntegerField(help_text='Of those, calls that failed.')),
                ('waits', models.JSONField(default=dict, help_text='Seconds from commit to start of the calls that started a first attempt, counted by log-scale bucket (see _history.bucket).')),
            ],
            options={
                'verbose_name': 'run record',
            },
        ),
    ]
