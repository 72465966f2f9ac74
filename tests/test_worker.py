"""A real ``qcluster`` worker process runs what the signals queued."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import transaction

from tests.conftest import Worker, path, rolled_back
from tests.handlers import record_bulk, record_note, record_shelving  # noqa: F401
from tests.models import Author, Bulk, Note, Seen, Shelf

pytestmark = pytest.mark.worker


def seen() -> list[tuple[int | None, str | None, bool | None]]:
    rows = Seen.objects.filter(handler="record_note")
    return sorted(rows.values_list("note_pk", "title", "created"))


def test_each_signal_runs_once_in_the_worker_with_committed_data(
    worker: Worker,
) -> None:
    from django_q.models import Success

    autocommit = [Note.objects.create(title=f"auto {i}") for i in range(5)]
    worker.wait_for(lambda: Seen.objects.count() == 5)

    with transaction.atomic():
        in_transaction = [Note.objects.create(title=f"txn {i}") for i in range(5)]
        for note in in_transaction:
            note.title += " (edited)"
            note.save()
        # The worker polls every 50 ms: it must find nothing before the commit.
        time.sleep(0.5)
        assert Seen.objects.count() == 5
    with rolled_back():
        Note.objects.create(title="rolled back")
    with transaction.atomic():
        gone = Note.objects.create(title="deleted before the worker ran")
        gone_pk = gone.pk
        gone.delete()

    worker.wait_for(lambda: Seen.objects.count() >= 16)
    time.sleep(0.5)  # room for a duplicate to show up

    expected: list[tuple[int, str | None, bool]]
    expected = [(n.pk, n.title, True) for n in autocommit]
    expected += [
        (n.pk, n.title, created) for n in in_transaction for created in (True, False)
    ]
    expected += [(gone_pk, None, True)]
    assert seen() == sorted(expected)
    # Django Q2's monitor saves each result after its handler ran.
    name = path(record_note)
    successes = Success.objects.filter(group=name, name=name)
    worker.wait_for(lambda: successes.count() >= 16)
    time.sleep(0.5)  # room for a duplicate to show up
    assert successes.count() == 16


def test_a_batch_runs_every_call_and_records_the_failed_ones(worker: Worker) -> None:
    from django_q.models import Failure

    titles = ["ok 1", "fail 2", "ok 3", "fail 4", "ok 5"]
    with transaction.atomic():
        bulks = [Bulk.objects.create(title=title) for title in titles]
    worker.wait_for(Failure.objects.exists)

    ran = Seen.objects.filter(handler="record_bulk").order_by("id")
    assert list(ran.values_list("title", flat=True)) == ["ok 1", "ok 3", "ok 5"]
    failure = Failure.objects.get()
    name = path(record_bulk)
    assert (failure.name, failure.group) == (name, name)
    assert failure.result.startswith(f"2 of 5 calls to {name} failed: ")
    assert f"call 2 (instance=<tests.Bulk pk={bulks[1].pk}>)" in failure.result
    assert "ValueError: refused fail 4" in failure.result


@pytest.mark.usefixtures("transactional_db")
def test_a_batch_with_a_failed_call_is_never_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ORM broker hands out a failed task again every `retry` seconds
    unless its failure is acknowledged, as it is not by default."""
    from django_q.conf import Conf
    from django_q.models import Failure

    monkeypatch.setattr(Conf, "ORM", "default")
    monkeypatch.setattr(Conf, "ACK_FAILURES", False)
    retry = 2
    env = {"QSIGNALS_ORM_BROKER": "default", "QSIGNALS_RETRY": str(retry)}
    worker = Worker(tmp_path / "qcluster.log", **env)
    try:
        with transaction.atomic():
            for title in ("ok 1", "fail 2", "ok 3"):
                Bulk.objects.create(title=title)
        worker.wait_for(Failure.objects.exists)
        time.sleep(2.5 * retry)  # two more chances to run it again
    finally:
        worker.stop()

    ran = Seen.objects.filter(handler="record_bulk").order_by("id")
    assert list(ran.values_list("title", flat=True)) == ["ok 1", "ok 3"]
    assert Failure.objects.get().attempt_count == 1


def test_relations_apply_to_the_model_they_were_written_for(worker: Worker) -> None:
    """An m2m's reverse side sends the other model as instance."""
    from django_q.models import Failure

    shelf = Shelf.objects.create(owner=Author.objects.create(name="Ada"))
    notes = [Note.objects.create(title=str(n)) for n in range(2)]
    with transaction.atomic():
        shelf.notes.add(notes[0])
        notes[1].shelf_set.add(shelf)
    worker.wait_for(lambda: Seen.objects.filter(handler="record_shelving").count() == 2)
    shelved = Seen.objects.filter(handler="record_shelving").order_by("id")
    assert list(shelved.values_list("title", flat=True)) == ["Shelf Ada", "Note None"]
    assert not Failure.objects.exists()


@pytest.mark.outbox
@pytest.mark.usefixtures("transactional_db")
def test_the_relay_run_by_the_cluster_sends_a_call_whose_task_was_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the ORM broker, the relay's own task is in the queue while it runs:
    it must not count as a task still on its way."""
    from datetime import timedelta

    from django.utils import timezone
    from django_q.conf import Conf
    from django_q.models import Success
    from django_q.tasks import async_task

    from django_q_signals.models import OutboxCall
    from tests.conftest import purge
    from tests.outbox_handlers import relay_probe

    monkeypatch.setattr(Conf, "ORM", "default")
    relay_probe.send(sender=None, word="lost")
    purge()  # a worker took the task and died before it ran
    OutboxCall.objects.update(sent=timezone.now() - timedelta(minutes=5))
    worker = Worker(tmp_path / "qcluster.log", QSIGNALS_ORM_BROKER="default")
    try:
        async_task("django_q_signals.worker.relay")
        worker.wait_for(Seen.objects.filter(handler="probe_relayed").exists)
    finally:
        worker.stop()
    assert list(Seen.objects.values_list("title", flat=True)) == ["lost"]
    assert (
        Success.objects.filter(func="django_q_signals.worker.relay").get().result == 1
    )
    assert not OutboxCall.objects.exists()
