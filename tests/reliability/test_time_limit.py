"""Handlers that outlive their task's timeout, under real qcluster processes:
batched and not, with the outbox and without. Django Q2 cuts such a call
short with its TimeoutException (a SystemExit) and replaces the worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import transaction
from django.test import override_settings

from django_q_signals import _relay
from django_q_signals.models import OutboxCall
from tests.conftest import Worker
from tests.reliability import workload
from tests.reliability.handlers import overrun_job

pytestmark = [
    pytest.mark.services,
    pytest.mark.reliability,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

JOBS = ["a1", "a2", "hang", "b1", "b2"]
RECEIVERS = ["overrun", "batched_overrun", "outbox_overrun", "batched_outbox_overrun"]
#: Runs of the call cut short: once, and once more for retries=1.
RUNS_OF_THE_CUT_CALL = {
    "overrun": 1,
    "batched_overrun": 1,
    "outbox_overrun": 2,
    "batched_outbox_overrun": 2,
}


@override_settings(Q_SIGNALS={"OUTBOX_RELAY_AFTER": 1})
def test_a_call_cut_short_by_the_time_limit_fails_and_no_other_is_lost_or_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = Worker(tmp_path / "qcluster.log")
    try:
        with transaction.atomic():
            for job in JOBS:
                overrun_job.send(sender=None, job=job)
        expected = {
            (f"{receiver}_attempt", "hang")
            for receiver, runs in RUNS_OF_THE_CUT_CALL.items()
            if runs == 2
        } | {(receiver, job) for receiver in RECEIVERS for job in JOBS if job != "hang"}
        deadline = time.monotonic() + 120
        while (
            not expected <= set(workload.delivered())
            or OutboxCall.objects.exclude(state="failed", due=None).exists()
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"not settled: {worker.log.read_text()[-3000:]}")
            _relay.run()
            time.sleep(0.5)
        time.sleep(2 * 2)  # room for a duplicate or a third run to show up
        _relay.run()
        time.sleep(2)
    finally:
        worker.stop()
    delivered = workload.delivered()
    with capsys.disabled():
        print(
            "\ntime limit: runs of the call cut short:",
            {
                receiver: delivered[f"{receiver}_attempt", "hang"]
                for receiver in RECEIVERS
            },
        )
    for receiver in RECEIVERS:
        # Every call but the one cut short ran exactly once, and finished.
        for job in JOBS:
            if job != "hang":
                assert delivered[receiver, job] == 1, (receiver, job)
                assert delivered[f"{receiver}_attempt", job] == 1, (receiver, job)
        # The one cut short never finished, and ran as its retries say.
        assert delivered[receiver, "hang"] == 0
        runs = delivered[f"{receiver}_attempt", "hang"]
        assert runs == RUNS_OF_THE_CUT_CALL[receiver], receiver
    # With the outbox, the call cut short stays failed, with the time limit's
    # error; nothing else is left.
    failed = OutboxCall.objects.order_by("receiver")
    assert [(row.state, row.attempts) for row in failed] == [("failed", 2)] * 2
    assert all("TimeoutException" in row.error for row in failed)
