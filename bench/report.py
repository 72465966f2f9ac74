"""What a run reports: its table and targets, printed and written to
bench/results/results.md, and its chart, bench/results/scale.png; for
--previous, its table, printed."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.modes import HOT, HOT_HANDLER_S, MODES, PREVIOUS_CASES, RESULTS
from bench.targets import targets

COLUMNS = (
    "backend",
    "N",
    "mode",
    "request path per save",
    "held per call",
    "peak per call",
    "tasks",
    "bytes per call",
    "end to end",
    "after the commit",
    "signals/s",
    "never processed",
)
#: The scale chart's panels: a title, and a measurement's value (None or 0:
#: not drawn, the axes being logarithmic).
PANELS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("request path per save (µs)", lambda r: r["per_save_us"]),
    # The floor defers nothing: what it holds is noise.
    (
        "bytes held per deferred call",
        lambda r: None if r["mode"] == "floor" else r["held_per_call"],
    ),
    ("bytes queued per call", lambda r: r["bytes"] / r["signals"] or None),
    ("end to end (s)", lambda r: r["end_to_end_s"]),
)


def report(rows: list[dict[str, Any]]) -> None:
    """Print the tables, the machine and the targets; write them, and the
    chart."""
    hot = [r for r in rows if r["mode"] in HOT]
    rows = [r for r in rows if r["mode"] not in HOT]
    lines = results_table(rows) + (hot_table(hot) if hot else [])
    machine = describe_machine()
    print("\n".join(lines))
    print(f"\n{machine}")
    print("\nTargets:")
    checked = targets(rows + hot)
    for line in checked:
        print(f"- {line}")
    RESULTS.mkdir(exist_ok=True)
    text = "\n".join(
        [*lines, "", machine, "", "Targets:", *(f"- {t}" for t in checked)]
    )
    (RESULTS / "results.md").write_text(text + "\n")
    scale_chart(rows, RESULTS / "scale.png")
    print(f"\nWrote {RESULTS / 'results.md'} and {RESULTS / 'scale.png'}")


def results_table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table, a row a measurement."""
    lines = [
        f"| {' | '.join(COLUMNS)} |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        e2e = row["end_to_end_s"]
        cells = [
            row["backend"],
            f"{row['n']:,}",
            MODES[row["mode"]][1],
            f"{row['per_save_us']:.0f} µs",
            f"{row['held_per_call']:.0f} B",
            f"{row['peak_per_call']:.0f} B",
            f"{row['tasks']:,}",
            f"{row['bytes'] / row['signals']:.0f} B",
            "-" if e2e is None else f"{e2e:.2f} s",
            "-" if e2e is None else f"{row['after_commit_s']:.2f} s",
            "-" if e2e is None else f"{row['signals'] / e2e:,.0f}",
            f"{row['missed']:,}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def hot_table(rows: list[dict[str, Any]]) -> list[str]:
    """--hot's Markdown table, a row a measurement, after a blank line."""
    lines = [
        "",
        (
            "One row, each commit its own transaction, a "
            f"{HOT_HANDLER_S * 1000:.0f} ms handler:"
        ),
        "",
        (
            "| backend | commits | mode | request path per commit | handler runs "
            "| end to end | after the last commit | last state never read |"
        ),
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            row["backend"],
            f"{row['commits']:,}",
            HOT[row["mode"]][1],
            f"{row['per_commit_us']:.0f} µs",
            f"{row['runs']:,}",
            f"{row['end_to_end_s']:.2f} s",
            f"{row['after_commit_s']:.2f} s",
            "yes" if row["missed"] else "no",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def describe_machine() -> str:
    from importlib.metadata import version

    import django

    return (
        f"Measured on {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"Django {django.get_version()}, Django Q2 {version('django-q2')}, "
        f"django-q-signals {version('django-q-signals')}."
    )


def report_previous(rows: list[dict[str, Any]], n: int) -> None:
    """Print --previous's table: each case with and without previous=."""
    lines = [
        f"{n:,} rows, one transaction, best of three; per save (per row to load).",
        "",
        (
            "| backend | case | without previous= | with previous= | extra "
            "| extra queries |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        extra = row["with_us"] - row["without_us"]
        queries = row["with_queries"] - row["without_queries"]
        lines.append(
            f"| {row['backend']} | {PREVIOUS_CASES[row['case']]} "
            f"| {row['without_us']:.0f} µs | {row['with_us']:.0f} µs "
            f"| {extra:+.0f} µs ({row['with_us'] / row['without_us']:.2f}x) "
            f"| {queries:.2f} |"
        )
    print("\n".join([*lines, "", describe_machine()]))


def scale_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """A row of panels a backend, one a measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r["backend"] for r in rows})
    fig, axes = plt.subplots(
        len(backends), len(PANELS), figsize=(18, 4.2 * len(backends)), squeeze=False
    )
    # One colour a mode in every panel, whichever modes a panel leaves out.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # 10 colours
    colours = dict(zip(MODES, palette, strict=False))
    for row_axes, backend in zip(axes, backends, strict=True):
        measured = [r for r in rows if r["backend"] == backend]
        for ax, (title, value) in zip(row_axes, PANELS, strict=True):
            scale_panel(ax, f"{backend}: {title}", measured, value, colours)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def scale_panel(
    ax: Any,
    title: str,
    rows: list[dict[str, Any]],
    value: Callable[[dict[str, Any]], Any],
    colours: dict[str, str],
) -> None:
    """A line a mode: ``value`` over N, on logarithmic axes."""
    for mode, (_, label, _) in MODES.items():
        points = sorted((r["n"], value(r)) for r in rows if r["mode"] == mode)
        points = [(n, v) for n, v in points if v]
        if points:
            ax.plot(
                *zip(*points, strict=True), marker="o", label=label, color=colours[mode]
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N saves in one transaction (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
