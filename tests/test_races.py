"""Slow transactions against a real worker: what on_commit prevents."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.db import connections, transaction

from tests.conftest import Worker
from tests.handlers import check_draft, check_draft_eagerly  # noqa: F401
from tests.models import Draft, Seen

pytestmark = [
    pytest.mark.services,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

THREADS = 3
TRANSACTIONS = 6  # per thread
HELD_OPEN = 0.5  # seconds between the writes and the commit: a slow request


def slow_requests() -> None:
    try:
        for _ in range(TRANSACTIONS):
            with transaction.atomic():
                draft = Draft.objects.create(title="draft")
                draft.title = "final"
                draft.save()
                time.sleep(HELD_OPEN)
    finally:
        connections.close_all()


def misses(handler: str) -> int:
    """Calls that found the row missing, or not yet as committed."""
    return Seen.objects.filter(handler=handler).exclude(title="final").count()


@pytest.mark.parametrize(
    "broker", [pytest.param("redis", marks=pytest.mark.redis), "orm on other"]
)
def test_no_handler_sees_a_missing_or_stale_row(
    broker: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django_q.conf import Conf

    env = {}
    if broker == "orm on other":
        monkeypatch.setattr(Conf, "ORM", "other")
        env["QSIGNALS_ORM_BROKER"] = "other"
    worker = Worker(tmp_path / "qcluster.log", **env)
    try:
        threads = [threading.Thread(target=slow_requests) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        signals = THREADS * TRANSACTIONS * 2  # a create and an update each
        worker.wait_for(lambda: Seen.objects.count() == 2 * signals)
    finally:
        worker.stop()

    on_commit, eager = misses("check_draft"), misses("check_draft_eagerly")
    with capsys.disabled():
        print(
            f"\nrace, {broker}: {signals} signals in transactions held open "
            f"{HELD_OPEN} s: missing or stale rows seen with on_commit=True: "
            f"{on_commit}, with on_commit=False: {eager}"
        )
    assert on_commit == 0
