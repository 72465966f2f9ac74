"""Faults, each against real qcluster processes, PostgreSQL and Redis."""

from __future__ import annotations

import logging
import os
import signal as signals
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_q_signals import _payload, _send
from tests.conftest import Worker, path
from tests.models import BatchedChore, Chore, Delivery
from tests.reliability.conftest import RedisServer
from tests.reliability.handlers import batched_chore_done, chore_done

pytestmark = [
    pytest.mark.services,
    pytest.mark.reliability,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]


def keys(receiver: str = "chore_done") -> list[str]:
    rows = Delivery.objects.filter(receiver=receiver).order_by("id")
    return list(rows.values_list("key", flat=True))


# A handler that raises.


def test_a_raising_handler_is_a_failure_named_after_its_receiver(
    worker: Worker,
) -> None:
    from django_q.models import Failure

    Chore.objects.create(title="fail: out of paper")
    Chore.objects.create(title="ok")
    worker.wait_for(lambda: Failure.objects.exists() and keys() == ["ok"])

    failure = Failure.objects.get()
    assert (failure.name, failure.group) == (path(chore_done), path(chore_done))
    assert failure.result.startswith("refused fail: out of paper : Traceback")
    assert "ValueError: refused fail: out of paper" in failure.result


def test_a_raising_call_of_a_batch_leaves_the_others_run(worker: Worker) -> None:
    from django_q.models import Failure

    with transaction.atomic():
        for title in ("ok 1", "fail 2", "ok 3", "fail 4", "ok 5"):
            BatchedChore.objects.create(title=title)
    worker.wait_for(Failure.objects.exists)

    failure = Failure.objects.get()
    name = path(batched_chore_done)
    assert (failure.name, failure.group) == (name, name)
    assert failure.result.startswith(f"2 of 5 calls to {name} failed: call 2 ")
    assert "ValueError: refused fail 4" in failure.result
    assert keys("batched_chore_done") == ["ok 1", "ok 3", "ok 5"]


# The whole cluster killed mid-run, on the ORM broker (Redis takes no receipts).

CHORES = 120  # 50 ms each, over two worker processes: about 3 s of work
RETRY = 3  # seconds before the ORM broker hands out a task again


def test_every_signal_runs_after_the_cluster_is_killed_and_restarted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", "default")
    env = {"QSIGNALS_ORM_BROKER": "default", "QSIGNALS_RETRY": str(RETRY)}
    titles = {f"slow {n}" for n in range(CHORES)}

    killed = Worker(tmp_path / "killed.log", **env)
    try:
        with transaction.atomic():
            for title in sorted(titles):
                Chore.objects.create(title=title)
        killed.wait_for(lambda: Delivery.objects.count() >= CHORES // 4)
        os.killpg(killed.process.pid, signals.SIGKILL)
        killed.process.wait()
    finally:
        killed.stop()
    before_restart = Delivery.objects.count()

    restarted = Worker(tmp_path / "restarted.log", **env)
    try:
        restarted.wait_for(lambda: set(keys()) == titles, timeout=60)
        time.sleep(RETRY + 1)  # room for a late redelivery
    finally:
        restarted.stop()

    duplicates = len(keys()) - len(titles)
    with capsys.disabled():
        print(
            f"\nkill: {CHORES} signals on the ORM broker, cluster SIGKILLed after "
            f"{before_restart} had run; after a restart all ran, "
            f"duplicate runs: {duplicates}"
        )
    assert before_restart < CHORES


# Redis going away, and coming back.


def queued_pks(tasks: list[dict[str, Any]]) -> list[int]:
    # An unbatched task's payload: (format, receiver, database, call), the
    # call (signal, layout, sender, instance's pk, ...).
    return [task["args"][0][3][3] for task in tasks]


def test_a_commit_while_redis_is_down_succeeds_and_logs_the_lost_call(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker has connected: it is the pooled connection that breaks.
    Chore.objects.create(title="queued while redis is up")
    assert len(own_redis.tasks()) == 1
    own_redis.stop()

    with transaction.atomic():
        lost = Chore.objects.create(title="committed while redis is down")

    assert Chore.objects.filter(pk=lost.pk).exists()
    [error] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelno == logging.ERROR
    message = error.getMessage()
    assert message.startswith("Could not queue 1 task(s): ")
    assert message.endswith(
        f"chore_done(instance=<tests.Chore pk={lost.pk}>); they are lost"
    )


def test_queuing_resumes_when_redis_comes_back(own_redis: RedisServer) -> None:
    own_redis.stop()
    Chore.objects.create(title="while down")
    own_redis.start()
    with transaction.atomic():
        after = Chore.objects.create(title="after")

    assert queued_pks(own_redis.tasks()) == [after.pk]


# The worker's database connections cut between tasks.


def test_the_next_tasks_run_after_the_workers_lost_their_connections(
    worker: Worker,
) -> None:
    for n in range(4):
        Chore.objects.create(title=f"before {n}")
    worker.wait_for(lambda: len(keys()) == 4)
    with connection.cursor() as cursor:
        # Every other backend on the test database: the worker processes'
        # and the monitor's, idle between tasks.
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        terminated = {pid for pid, cut in cursor.fetchall() if cut}

    for n in range(4):
        Chore.objects.create(title=f"after {n}")
    worker.wait_for(lambda: len(keys()) == 8)

    used = dict(Delivery.objects.values_list("key", "backend"))
    # Each worker process keeps its last task's connection open: cut.
    assert {used[f"before {n}"] for n in range(4)} & terminated
    assert sorted(keys()) == [
        f"{when} {n}" for when in ("after", "before") for n in range(4)
    ]


# Tasks the worker must refuse.

NOT_A_RECEIVER = "tests.reliability.handlers.not_a_receiver"


def task(func: str, *args: Any) -> dict[str, Any]:
    """A task as Django Q2's async_task builds it."""
    return {
        "id": uuid.uuid4().hex,
        "name": "tampered",
        "func": func,
        "args": args,
        "kwargs": {},
        "started": timezone.now(),
    }


def signed(task: dict[str, Any], key: str | None = None) -> str:
    from django_q.conf import Conf
    from django_q.core_signing import dumps
    from django_q.signing import PickleSerializer

    return str(
        dumps(
            task,
            key=key or Conf.SECRET_KEY,
            salt=Conf.PREFIX,
            serializer=PickleSerializer,
        )
    )


def forged() -> str:
    """A task that runs a plain function, signed with another key."""
    return signed(task(NOT_A_RECEIVER), key="not the project's SECRET_KEY")


def altered() -> str:
    """A genuine task's signature on another task's content."""
    genuine = signed(task(_send.TASK, b""))
    content = signed(task(NOT_A_RECEIVER))
    return f"{content.rsplit(':', 1)[0]}:{genuine.rsplit(':', 1)[1]}"


#: A call with no values, to the first signal, from no sender.
NO_VALUES = (0, ((), "v"), None)


def unknown_receiver() -> tuple[Any, ...]:
    """A well-formed call naming a function that is not a receiver."""
    return (_payload.FORMAT, NOT_A_RECEIVER, None, NO_VALUES)


REFUSED = "ERROR django_q_signals: Refused a queued signal"
UNSIGNED = "ERROR django-q: Failed to push task to queue"
TAMPERED = {
    # name: (the signed task on the broker, the ERROR line, the error it names)
    "unknown receiver": (
        lambda: signed(task(_send.TASK, unknown_receiver())),
        REFUSED,
        f"LookupError: No async receiver {NOT_A_RECEIVER!r} in this worker",
    ),
    "bad pickle": (
        lambda: signed(task(_send.TASK, b"\x80\x05not a pickle")),
        REFUSED,
        "ValueError: Not a django-q-signals payload",
    ),
    "wrong format": (
        lambda: signed(task(_send.TASK, (99, NOT_A_RECEIVER, None, NO_VALUES))),
        REFUSED,
        f"ValueError: Payload format 99 is not {_payload.FORMAT}",
    ),
    "altered signed package": (altered, UNSIGNED, "BadSignature: Signature"),
    "forged signature": (forged, UNSIGNED, "BadSignature: Signature"),
}


@pytest.mark.parametrize(
    ("pack", "logged", "error"), TAMPERED.values(), ids=TAMPERED.keys()
)
def test_a_tampered_task_is_refused_and_runs_nothing(
    worker: Worker, pack: Callable[[], str], logged: str, error: str
) -> None:
    from django_q.brokers import get_broker

    get_broker().enqueue(pack())
    worker.wait_for(lambda: error in worker.log.read_text())
    # Run one genuine signal after it, so anything it set off has run too.
    Chore.objects.create(title="genuine")
    worker.wait_for(lambda: keys() == ["genuine"])

    assert logged in worker.log.read_text().splitlines()
    assert list(Delivery.objects.values_list("receiver", flat=True)) == ["chore_done"]
