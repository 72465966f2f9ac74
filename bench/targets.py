"""The targets a run's measurements are checked against: each a ratio, and
the most it may be."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from operator import itemgetter
from typing import Any

from bench.modes import HOT, MODES, QUEUELESS

Row = dict[str, Any]
#: A measurement's value, or None where it was not taken.
Metric = Callable[[Row], Any]
#: (backend, N, mode): its measurements.
Measurements = dict[tuple[str, int, str], Row]

LABEL = {mode: spec[1] for mode, spec in MODES.items()}
per_save = itemgetter("per_save_us")
held_per_call = itemgetter("held_per_call")
end_to_end = itemgetter("end_to_end_s")
after_commit = itemgetter("after_commit_s")


def bytes_per_call(row: Row) -> float:
    return float(row["bytes"]) / float(row["signals"])


def bytes_per_task(row: Row) -> float:
    return float(row["bytes"]) / float(row["tasks"])


def targets(rows: list[Row]) -> list[str]:
    """Each target, its value and whether it is met."""
    hot = {(r["backend"], r["mode"]): r for r in rows if r["mode"] in HOT}
    rows = [r for r in rows if r["mode"] not in HOT]
    by = {(r["backend"], r["n"], r["mode"]): r for r in rows}
    out: list[str] = []
    for backend in sorted({r["backend"] for r in rows}):
        sizes = sorted({r["n"] for r in rows if r["backend"] == backend})
        out += outbox_targets(by, backend, sizes[0])
        out += row_option_targets(by, backend, sizes[0])
        out += hot_targets(hot, backend)
        out += scale_targets(by, backend, sizes[0], sizes[-1])
        for n in sizes:
            out += bytes_targets(by, backend, n)
            out += time_targets(by, backend, n)
    return out


def checked(what: str, mine: Any, theirs: Any, limit: float) -> list[str]:
    """The target's line: mine / theirs and whether it is at most ``limit``;
    none where either was not measured."""
    if mine is None or theirs is None:
        return []
    value = mine / theirs if theirs else float("inf")
    return [f"{what}: {value:.2f} ({'met' if value <= limit else 'NOT met'})"]


def measured(by: Measurements, backend: str, n: int, mode: str, get: Metric) -> Any:
    row = by.get((backend, n, mode))
    return None if row is None else get(row)


def outbox_targets(by: Measurements, backend: str, first: int) -> list[str]:
    """The outbox against the same receiver without it, at the first size."""
    out = []
    for mode, base in (("outbox", "default"), ("outbox_batch", "batch")):
        for metric, get, limit in (
            ("request path", per_save, 1.5),
            ("end to end", end_to_end, 1.3),
        ):
            out += checked(
                f"{backend}, {first:,}: {LABEL[mode]} {metric} / {LABEL[base]} "
                f"(at most {limit}x)",
                measured(by, backend, first, mode, get),
                measured(by, backend, first, base, get),
                limit,
            )
    return out


def row_option_targets(by: Measurements, backend: str, first: int) -> list[str]:
    """ordered and supersede against the same outbox receiver without them,
    at the first size: no two calls share a row, so neither has anything to
    do but check."""
    out = []
    for mode in ("ordered", "supersede"):
        for metric, get, limit in (
            ("request path", per_save, 1.1),
            ("end to end", end_to_end, 1.2),
        ):
            out += checked(
                f"{backend}, {first:,} rows: {LABEL[mode]} {metric} / "
                f"{LABEL['outbox']} (at most {limit}x)",
                measured(by, backend, first, mode, get),
                measured(by, backend, first, "outbox", get),
                limit,
            )
    return out


def hot_targets(hot: dict[tuple[str, str], Row], backend: str) -> list[str]:
    """One row committed again and again: supersede's end to end against the
    same receiver without it, at most a tenth (10x faster)."""
    mine, theirs = hot.get((backend, "hot_supersede")), hot.get((backend, "hot_outbox"))
    if mine is None or theirs is None:
        return []
    return checked(
        f"{backend}, one row, {mine['commits']:,} commits: supersede=True end to "
        f"end / without it (at most 0.1x: 10x faster; "
        f"{theirs['end_to_end_s'] / mine['end_to_end_s']:.1f}x faster)",
        mine["end_to_end_s"],
        theirs["end_to_end_s"],
        0.1,
    )


def scale_targets(by: Measurements, backend: str, first: int, last: int) -> list[str]:
    """Each mode at the last size against itself at the first."""
    out: list[str] = []
    if last == first:
        return out
    for mode in MODES:
        if mode in QUEUELESS:
            continue
        for metric, get in (
            ("request path per save", per_save),
            ("bytes queued per call", bytes_per_call),
        ):
            if mode == "manual" and get is bytes_per_call:
                continue  # Django Q2's random task names
            out += checked(
                f"{backend}: {LABEL[mode]} {metric}, {last:,} / {first:,} "
                "(at most 1.2x)",
                measured(by, backend, last, mode, get),
                measured(by, backend, first, mode, get),
                1.2,
            )
    return out


def bytes_targets(by: Measurements, backend: str, n: int) -> list[str]:
    """The bytes held and queued per call at size ``n``, against fixed sizes
    and a hand-written task."""
    at = partial(measured, by, backend, n)
    where = f"{backend}, {n:,}"
    out = []
    for mode in ("default", "batch"):
        out += checked(
            f"{where}: {LABEL[mode]} bytes held per deferred call / 300 (at most 1.0x)",
            at(mode, held_per_call),
            300,
            1.0,
        )
    out += checked(
        f"{where}: bytes of an unbatched task / a hand-written one (at most 1.0x)",
        at("default", bytes_per_task),
        at("manual", bytes_per_task),
        1.0,
    )
    out += checked(
        f"{where}: bytes per call in a batch task / 100 (at most 1.0x)",
        at("batch", bytes_per_call),
        100,
        1.0,
    )
    return out


def time_targets(by: Measurements, backend: str, n: int) -> list[str]:
    """The modes' times against each other at size ``n``."""
    at = partial(measured, by, backend, n)
    where = f"{backend}, {n:,}"
    out = []
    for metric, get in (("request path", per_save), ("end to end", end_to_end)):
        out += checked(
            f"{where}: {LABEL['default']} {metric} / hand-written (at most 1.0x)",
            at("default", get),
            at("manual", get),
            1.0,
        )
    out += checked(
        f"{where}: batch=True end to end / the floor (at most 1.3x)",
        at("batch", end_to_end),
        at("floor", end_to_end),
        1.3,
    )
    for metric, get in (("end to end", end_to_end), ("after the commit", after_commit)):
        out += checked(
            f"{where}: coalesce=True, 3 saves a row / batch=True, 1 save a "
            f"row, {metric} (at most 1.2x)",
            at("coalesce", get),
            at("batch", get),
            1.2,
        )
    return out
