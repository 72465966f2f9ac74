"""The outbox against real faults: dead processes, a broker that goes away,
calls sent twice, a handler that fails. Real qcluster processes, PostgreSQL
and Redis; every handler call writes a Delivery row, so that missing and
duplicate calls are counted."""

from __future__ import annotations

import os
import signal as signals
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings

from django_q_signals import _relay
from django_q_signals.models import OutboxCall
from tests.conftest import Worker
from tests.models import BatchedErrand, Delivery, Errand, Tag
from tests.reliability import workload
from tests.reliability.conftest import RedisServer
from tests.reliability.handlers import flaky_job

pytestmark = [
    pytest.mark.services,
    pytest.mark.reliability,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

#: Seconds the relay leaves a call alone before it sends it again.
RELAY_AFTER = 2


@pytest.fixture(autouse=True)
def _relay_soon() -> Iterator[None]:
    with override_settings(Q_SIGNALS={"OUTBOX_RELAY_AFTER": RELAY_AFTER}):
        yield


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\noutbox: {line}")


def settle(
    workers: list[Worker], wanted: set[tuple[str, str]], timeout: float
) -> float:
    """Run the relay every second until ``wanted`` was delivered; how long
    it took."""
    started = time.monotonic()
    while not wanted <= set(workload.delivered()):
        for each in workers:
            if each.process.poll() is not None:
                pytest.fail(f"qcluster exited:\n{each.log.read_text()}")
        if time.monotonic() - started > timeout:
            missing = wanted - set(workload.delivered())
            pytest.fail(f"{len(missing)} calls missing, e.g. {sorted(missing)[:5]}")
        _relay.run()
        time.sleep(1)
    return time.monotonic() - started


def sent_workload(items: int, tag: Tag) -> set[tuple[str, str]]:
    """The workload through the two outbox receivers; the calls it sent."""
    receivers = {Errand: "errand", BatchedErrand: "batched_errand"}
    sent = workload.send(receivers, items, tag)
    return {(receiver, key) for receiver, keys in sent.items() for key in keys}


def duplicates() -> int:
    return sum(n - 1 for n in workload.delivered().values())


def workers(tmp_path: Path, count: int, **env: str) -> list[Worker]:
    return [
        Worker(tmp_path / f"qcluster-{n}.log", QSIGNALS_CLUSTER=str(n), **env)
        for n in range(1, count + 1)
    ]


def stop(running: list[Worker]) -> None:
    for each in running:
        each.stop()


# The request process killed between the commit and the broker.


def test_calls_of_a_process_killed_after_its_commit_are_relayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A commit callback ahead of the library's kills the process: nothing
    was sent. The relay Django Q2 runs on its schedule sends it all."""
    from django_q.models import Schedule

    call_command("migrate", "django_q_signals", "0001", verbosity=0)
    call_command("migrate", "django_q_signals", verbosity=0)  # the schedule
    script = (
        "import os, django\n"
        "django.setup()\n"
        "from django.db import transaction\n"
        "import tests.reliability.handlers\n"
        "from tests.models import Errand\n"
        "with transaction.atomic():\n"
        "    transaction.on_commit(lambda: os._exit(0))\n"
        "    for n in range(50):\n"
        "        Errand.objects.create(title=f'orphan {n}')\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "QSIGNALS_TEST_DB": connections["default"].settings_dict["NAME"],
        "QSIGNALS_TEST_DB_OTHER": connections["other"].settings_dict["NAME"],
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    assert Errand.objects.count() == 50
    assert set(OutboxCall.objects.values_list("state", flat=True)) == {"queued"}

    started = time.monotonic()
    running = workers(tmp_path, 1, QSIGNALS_RELAY_AFTER=str(RELAY_AFTER))
    try:
        wanted = {
            ("errand", f"create:{pk}")
            for pk in Errand.objects.values_list("pk", flat=True)
        }
        running[0].wait_for(lambda: wanted <= set(workload.delivered()), timeout=120)
    finally:
        stop(running)
    waited = time.monotonic() - started
    assert Schedule.objects.filter(name="django_q_signals: outbox relay").exists()
    report(
        capsys,
        f"process killed after its commit: 50 calls, all run {waited:.0f} s after "
        "a qcluster started, by the relay it runs on its schedule; missing 0, "
        f"duplicates {duplicates()}",
    )
    assert duplicates() == 0
    assert not OutboxCall.objects.exists()


# Redis going away in the middle of a load.

ITEMS = 200  # of each model: 400 items, 8 signals each
OUTAGE = 20  # seconds


def test_redis_stopped_in_the_middle_of_a_load_loses_nothing(
    own_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = workers(
        tmp_path,
        2,
        QSIGNALS_REDIS_URL=own_redis.url,
        QSIGNALS_RELAY_AFTER=str(RELAY_AFTER),
    )
    try:
        tag = Tag.objects.create(name="load")
        started = time.monotonic()
        wanted = sent_workload(ITEMS // 2, tag)
        own_redis.stop()  # with the tasks it held: it keeps nothing on disk
        stopped = time.monotonic()
        wanted |= sent_workload(ITEMS - ITEMS // 2, tag)
        sent = time.monotonic() - started
        time.sleep(max(0, OUTAGE - (time.monotonic() - stopped)))
        own_redis.start()
        waited = settle(running, wanted, timeout=240)
        time.sleep(2)  # room for a late duplicate
    finally:
        stop(running)
    signals_sent = len(wanted)
    missing = len(wanted - set(workload.delivered()))
    report(
        capsys,
        f"Redis stopped for {OUTAGE} s in a load of {signals_sent} signals "
        f"({ITEMS * 2} items, unbatched and batched) through 2 qcluster "
        f"processes: sent in {sent:.1f} s, all run {waited:.1f} s after Redis "
        f"came back; missing {missing}, duplicates {duplicates()}",
    )
    assert signals_sent == 3_200
    assert missing == 0
    assert duplicates() == 0


# A cluster killed while its handlers run, on Redis.

SLOW = 120  # errands of 50 ms each


def test_a_cluster_killed_mid_run_on_redis_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Handlers time out after 3 s: a dead run's claim expires 8 s after it began.
    env = {"QSIGNALS_RETRY": "4", "QSIGNALS_RELAY_AFTER": str(RELAY_AFTER)}
    titles = [f"slow {n}" for n in range(SLOW)]
    killed = Worker(tmp_path / "killed.log", **env)
    try:
        with transaction.atomic():
            errands = [Errand.objects.create(title=title) for title in titles]
        killed.wait_for(lambda: Delivery.objects.count() >= SLOW // 4)
        os.killpg(killed.process.pid, signals.SIGKILL)
        killed.process.wait()
    finally:
        killed.stop()
    before = Delivery.objects.count()
    wanted = {("errand", f"create:{errand.pk}") for errand in errands}
    restarted = workers(tmp_path, 1, **env)
    try:
        waited = settle(restarted, wanted, timeout=120)
    finally:
        stop(restarted)
    report(
        capsys,
        f"cluster SIGKILLed on Redis after {before} of {SLOW} calls had run: all "
        f"ran {waited:.0f} s after a restart; missing 0, run twice {duplicates()} "
        "(a call whose handler had finished when its worker died)",
    )
    assert before < SLOW


# Every call sent twice, by two relays at once.


def test_calls_sent_twice_by_two_relays_at_once_run_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = Tag.objects.create(name="twice")
    wanted = sent_workload(50, tag)  # no worker yet: every task waits on Redis
    calls = OutboxCall.objects.count()

    def relay_everything() -> None:
        try:
            _relay.run(everything=True)
        finally:
            connections.close_all()

    relays = [threading.Thread(target=relay_everything) for _ in range(2)]
    for each in relays:
        each.start()
    for each in relays:
        each.join()
    running = workers(tmp_path, 2)
    try:
        waited = settle(running, wanted, timeout=120)
        time.sleep(2)
    finally:
        stop(running)
    report(
        capsys,
        f"{calls} outbox calls sent, then each sent again by one of two relays "
        f"running at once: all run {waited:.0f} s after the workers started; "
        f"run twice {duplicates()}",
    )
    assert duplicates() == 0
    assert not OutboxCall.objects.exists()


# A handler that fails twice, with retries=3.


def test_a_handler_failing_twice_runs_a_third_time_and_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = workers(tmp_path, 1)
    try:
        flaky_job.send(sender=None, job="resize")
        settle(running, {("flaky_done", "resize")}, timeout=60)
    finally:
        stop(running)
    attempts = workload.delivered()[("flaky_attempt", "resize")]
    report(capsys, f"retries=3, a handler failing twice: it ran {attempts} times")
    assert attempts == 3
    assert not OutboxCall.objects.exists()
