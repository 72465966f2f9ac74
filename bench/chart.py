"""The performance page's headline chart: request path per save and end to
end, for a task queued by hand, ``async_receiver()`` and ``batch=True``.

    nox -s chart                                            # from the page
    nox -s chart -- bench/results/measurements.jsonl        # from a run

Without an argument it reads the figures the page shows (the per-backend
tables of docs/performance.md), so the chart always says what the page's
tables say; with a run's measurements.jsonl (see run.py) it draws that run.
It writes docs/_static/performance-headline.svg.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.modes import MODES, ROOT

PAGE = ROOT / "docs" / "performance.md"
OUTPUT = ROOT / "docs" / "_static" / "performance-headline.svg"
#: The size whose every mode ran end to end.
N = 2000
#: The three ways of queuing a call the chart compares, in its order.
SHOWN = {
    "manual": "hand-written\non_commit(async_task)",
    "default": "async_receiver()",
    "batch": "async_receiver(\nbatch=True)",
}
#: Readable as bar colours on the white figure, and told apart without colour
#: by their order and labels.
COLOURS = {"manual": "#9ca3af", "default": "#2563eb", "batch": "#059669"}


def from_page(text: str) -> list[dict[str, Any]]:
    """The rows of the page's per-backend tables: a `### backend` heading,
    then `| N | mode | request path per save | ... | end to end | ...`."""
    label_to_mode = {label: mode for mode, (_, label, _) in MODES.items()}
    rows: list[dict[str, Any]] = []
    backend = None
    columns: list[str] = []
    for line in text.splitlines():
        if line.startswith("### "):
            backend, columns = line[4:].strip(), []
            continue
        if backend is None or not line.startswith("|"):
            continue
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        if cells[0] == "N":
            columns = cells
            continue
        if not columns or not re.fullmatch(r"[\d,]+", cells[0]):
            continue
        row = dict(zip(columns, cells, strict=True))
        rows.append(
            {
                "backend": backend,
                "n": int(row["N"].replace(",", "")),
                "mode": label_to_mode[row["mode"]],
                "per_save_us": _number(row["request path per save"]),
                "end_to_end_s": _number(row["end to end"]),
            }
        )
    if not rows:
        sys.exit(f"No per-backend tables found in {PAGE}")
    return rows


def _number(cell: str) -> float | None:
    """`2,665 µs` -> 2665.0; `-` (not measured) -> None."""
    if cell == "-":
        return None
    return float(cell.split()[0].replace(",", ""))


def headline(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels, one bar a mode and backend: request path per save (µs) and
    end to end (s), at N = 2,000."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["backend"], r["n"], r["mode"]): r for r in rows}
    backends = sorted(
        {r["backend"] for r in rows if (r["backend"], N, "manual") in by},
        key=lambda b: (not b.startswith("SQLite"), b),
    )
    plt.rcParams.update(
        {"font.size": 9, "svg.fonttype": "none", "svg.hashsalt": "performance"}
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3), facecolor="white")
    panels = (
        ("request path per save (µs)", "per_save_us", "{:,.0f}"),
        (f"end to end, {N:,} saves (s)", "end_to_end_s", "{:.2f}"),
    )
    for ax, (title, key, fmt) in zip(axes, panels, strict=True):
        values = {mode: [by[(b, N, mode)][key] for b in backends] for mode in SHOWN}
        bar_panel(ax, title, backends, values, fmt)
    axes[0].legend(fontsize=8, frameon=False, loc="upper right")
    fig.suptitle(
        "Lower is better: each save updates its row in a handler, "
        f"{N:,} saves in one transaction",
        fontsize=9,
        color="#4b5563",
    )
    fig.tight_layout()
    # A fixed date and no random ids: the same figures give the same file.
    fig.savefig(path, metadata={"Date": None}, facecolor="white")
    plt.close(fig)


def bar_panel(
    ax: Any, title: str, backends: list[str], values: dict[str, list[float]], fmt: str
) -> None:
    """A group of bars a backend, a bar a mode: ``values`` holds each mode's
    value on each backend, written above its bar with ``fmt``."""
    width = 0.8 / len(values)
    for i, (mode, heights) in enumerate(values.items()):
        xs = [b + (i - (len(values) - 1) / 2) * width for b in range(len(backends))]
        bars = ax.bar(xs, heights, width * 0.92, label=SHOWN[mode], color=COLOURS[mode])
        ax.bar_label(bars, [fmt.format(h) for h in heights], fontsize=8, padding=2)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(backends)), backends)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", labelsize=8)


def main() -> None:
    if len(sys.argv) > 1:
        source = Path(sys.argv[1])
        rows = [json.loads(line) for line in source.read_text().splitlines()]
    else:
        rows = from_page(PAGE.read_text())
    headline(rows, OUTPUT)
    print(f"Wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
