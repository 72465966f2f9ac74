"""The run records: what outbox receivers did in the last hour."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections, transaction
from django.utils import timezone

from django_q_signals import _history
from django_q_signals._history import Recent
from django_q_signals.models import RunRecord
from tests.models import Article

pytestmark = pytest.mark.django_db(databases=["default", "other"])

MS = 0.001


@pytest.fixture(autouse=True)
def _pruned_just_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as if its process had just deleted old records."""
    monkeypatch.setattr(
        _history, "_pruned_at", dict.fromkeys(connections, time.monotonic())
    )
    monkeypatch.setattr(_history, "_failed_on", set())


def within_a_bucket(shown: float | None, exact: float) -> bool:
    """Whether ``shown`` is within half a bucket's width of ``exact``."""
    assert shown is not None
    return abs(math.log2(shown / exact)) <= 0.5 / _history.BUCKETS_PER_DOUBLING


def merged(waits: list[float]) -> Counter[int]:
    return Counter({int(k): v for k, v in _history.histogram(waits).items()})


# The histogram


@pytest.mark.parametrize(
    ("wait", "number"),
    [
        (0.0, 0),
        (-3.0, 0),  # clocks that disagree
        (float("nan"), 0),
        (0.0005, 0),
        (MS, 0),
        (2 * MS, 8),
        (1.0, math.floor(math.log2(1000) * 8)),
        (float("inf"), 400),
    ],
)
def test_a_wait_falls_in_a_log_scale_bucket(wait: float, number: int) -> None:
    assert _history.bucket(wait) == number


def test_each_wait_is_within_half_a_bucket_of_its_buckets_value() -> None:
    for wait in (0.0011, 0.0173, 0.25, 1.0, 3.7, 61.0, 7200.0):
        assert within_a_bucket(_history.bucket_value(_history.bucket(wait)), wait)


def test_the_histogram_of_many_waits_stays_small() -> None:
    waits = [n * MS for n in range(1, 10_001)]  # 1 ms to 10 s
    counted = _history.histogram(waits)
    assert sum(counted.values()) == 10_000
    # Eight buckets to each of the 13 and a bit doublings.
    assert len(counted) <= 8 * 14


def test_median_and_95th_percentile_of_known_waits() -> None:
    buckets = merged([n * MS for n in range(1, 1001)])  # 1 ms to 1 s, evenly
    assert within_a_bucket(_history.percentile(buckets, 0.5), 0.500)
    assert within_a_bucket(_history.percentile(buckets, 0.95), 0.950)


def test_a_percentile_of_one_wait_is_that_wait() -> None:
    buckets = merged([0.040])
    assert within_a_bucket(_history.percentile(buckets, 0.5), 0.040)
    assert within_a_bucket(_history.percentile(buckets, 0.95), 0.040)


def test_percentiles_of_a_few_slow_waits_among_fast_ones() -> None:
    buckets = merged([0.010] * 94 + [2.0] * 6)
    assert within_a_bucket(_history.percentile(buckets, 0.5), 0.010)
    assert within_a_bucket(_history.percentile(buckets, 0.95), 2.0)


def test_no_waits_have_no_percentile() -> None:
    assert _history.percentile(Counter(), 0.5) is None


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0004, "0 ms"),
        (0.0351, "35 ms"),
        (1.24, "1.2 s"),
        (59.9, "59.9 s"),
        (210.0, "3.5 min"),
        (7200.0, "2.0 h"),
    ],
)
def test_a_duration_is_shown_in_the_unit_that_reads_best(
    seconds: float, shown: str
) -> None:
    assert _history.duration(seconds) == shown


# record()


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_run_is_recorded_with_one_insert(django_assert_num_queries: Any) -> None:
    # In autocommit, as the worker runs.
    with django_assert_num_queries(1):
        _history.record(
            "default", "shop.reindex", runs=3, failures=1, waits=[0.02, 0.03]
        )
    [row] = RunRecord.objects.all()
    assert (row.receiver, row.runs, row.failures) == ("shop.reindex", 3, 1)
    assert row.waits == {str(_history.bucket(0.02)): 1, str(_history.bucket(0.03)): 1}
    assert timezone.now() - row.ended < timedelta(seconds=5)


def test_a_run_is_recorded_on_its_database() -> None:
    _history.record("other", "shop.reindex", runs=1, failures=0, waits=[])
    assert not RunRecord.objects.exists()
    assert RunRecord.objects.using("other").get().waits == {}


def old_record(alias: str = "default", age: timedelta = timedelta(hours=2)) -> None:
    RunRecord.objects.using(alias).create(
        receiver="shop.old", ended=timezone.now() - age, runs=1, failures=0
    )


def test_old_records_are_deleted_about_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old_record()
    old_record(age=timedelta(minutes=65))  # in the margin: kept
    _history.record("default", "shop.new", runs=1, failures=0, waits=[])
    assert RunRecord.objects.count() == 3
    monkeypatch.setattr(_history, "_pruned_at", {"default": time.monotonic() - 61})
    _history.record("default", "shop.new", runs=1, failures=0, waits=[])
    assert sorted(RunRecord.objects.values_list("receiver", flat=True)) == [
        "shop.new",
        "shop.new",
        "shop.old",
    ]


def test_a_process_deletes_old_records_at_its_first_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_history, "_pruned_at", {})
    old_record("other")
    _history.record("other", "shop.new", runs=1, failures=0, waits=[])
    kept = RunRecord.objects.using("other").values_list("receiver", flat=True)
    assert list(kept) == ["shop.new"]


@contextlib.contextmanager
def no_table(alias: str = "default") -> Iterator[None]:
    """The run records' table is not on ``alias`` (0006 not migrated there):
    dropped, then made again. Only outside transactions (SQLite's schema
    editor needs that, and MySQL commits its DDL)."""
    connection = connections[alias]
    with connection.schema_editor() as editor:
        editor.delete_model(RunRecord)
    try:
        yield
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(RunRecord)


WITHOUT_TRANSACTION = pytest.mark.django_db(
    transaction=True, databases=["default", "other"]
)


@WITHOUT_TRANSACTION
def test_a_run_that_cannot_be_recorded_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with no_table():
        _history.record("default", "shop.reindex", runs=1, failures=0, waits=[0.1])
        assert "Could not record a run of shop.reindex on the database 'default'" in (
            caplog.text
        )
        caplog.clear()
        with transaction.atomic():
            _history.record("default", "shop.reindex", runs=1, failures=0, waits=[])
            # The transaction it failed in can still be used.
            assert Article.objects.create(title="after").pk
        assert "Could not record" not in caplog.text  # said once a process
    assert Article.objects.count() == 1
    assert not RunRecord.objects.exists()


# last_hour()


def test_the_last_hour_adds_up_every_databases_records() -> None:
    _history.record("default", "shop.reindex", runs=3, failures=1, waits=[0.02] * 3)
    _history.record("other", "shop.reindex", runs=2, failures=0, waits=[0.02, 4.0])
    _history.record("other", "shop.mail", runs=1, failures=1, waits=[])
    old_record()
    summary = _history.last_hour()
    assert set(summary) == {"shop.reindex", "shop.mail"}
    reindex = summary["shop.reindex"]
    assert (reindex.runs, reindex.failures, reindex.started) == (5, 1, 5)
    assert within_a_bucket(reindex.median, 0.02)
    assert within_a_bucket(reindex.p95, 4.0)
    assert summary["shop.mail"] == Recent(
        runs=1, failures=1, started=0, median=None, p95=None
    )


def test_the_last_hour_ends_at_the_time_given() -> None:
    _history.record("default", "shop.reindex", runs=1, failures=0, waits=[])
    assert _history.last_hour(now=timezone.now() - timedelta(minutes=1)) == {}
    later = _history.last_hour(now=timezone.now() + timedelta(minutes=59))
    assert later["shop.reindex"].runs == 1
    assert _history.last_hour(now=timezone.now() + timedelta(minutes=61)) == {}


@WITHOUT_TRANSACTION
def test_the_last_hour_leaves_out_a_database_it_cannot_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _history.record("other", "shop.reindex", runs=1, failures=0, waits=[])
    with no_table(), transaction.atomic():
        assert _history.last_hour()["shop.reindex"].runs == 1
        # The transaction it failed in can still be used.
        assert Article.objects.create(title="after").pk
    assert "Could not read the run records of the database 'default'" in caplog.text


def test_a_record_says_what_it_counts() -> None:
    record = RunRecord(receiver="shop.reindex", runs=3, failures=1)
    assert str(record) == "shop.reindex: 3 ran, 1 failed"
