"""The report's terminal tables: the leaderboard, the importances, a status count."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tune_losses.report.importances import Importances
from tune_losses.tracking import (
    CURVE_METRIC,
    LEADERBOARD,
    TrialRecord,
    best_label,
    format_best,
    searched_params,
    short_names,
    short_value,
)

TERMINAL_WIDTH = 120
TERMINAL_ROWS = 10
_NAME_WIDTH = 24
_VALUE_WIDTH = 12
_HEADER_WIDTH = 14


def print_leaderboard(
    trials: Sequence[TrialRecord],
    title: str,
    top: int | None = None,
    file: Any = None,
    *,
    csv: str | Path = LEADERBOARD,
    width: int = TERMINAL_WIDTH,
) -> None:
    """Rich table that fits ``width`` columns: the ``top`` best trials (default
    :data:`TERMINAL_ROWS`), how each ended, its best value of the search's metric
    (``best mIoU``, ``best train/loss``) and the searched values only
    (params that vary, named without their shared prefix), as many as fit; the caption
    points to ``csv`` for the rest. The report and the search's end summary print it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = top or TERMINAL_ROWS
    shown = list(trials[:rows])
    searched = searched_params(trials)
    names = short_names(searched)
    metric = trials[0].metric if trials else CURVE_METRIC
    fixed = ["#", "trial", "ended", "epochs", best_label(metric)]
    cells = [
        [
            str(rank),
            _clip(t.name, _NAME_WIDTH),
            t.stop_reason or t.status,
            t.epochs_run,
            format_best(t.best, metric),
        ]
        for rank, t in enumerate(shown, 1)
    ]
    if len(trials) > len(shown):
        cells.append(["...", f"{len(trials) - len(shown)} more in the CSV", "", "", ""])
    used = 1 + sum(3 + _width(h, [c[i] for c in cells]) for i, h in enumerate(fixed))
    params: list[str] = []
    for key in searched:
        values = [_clip(short_value(t.params.get(key, "")), _VALUE_WIDTH) for t in shown]
        values += [""] * (len(cells) - len(shown))
        need = 3 + _width(_header(names[key]), values)
        if used + need > width:
            break
        used += need
        params.append(key)
        for row, value in zip(cells, values, strict=True):
            row.append(value)
    notes = []
    if len(trials) > len(shown):
        notes.append(f"top {len(shown)} of {len(trials)} trials")
    if len(params) < len(searched):
        notes.append(f"{len(searched) - len(params)} more searched params")
    others = len({k for t in trials for k in t.params}) - len(searched)
    if others:
        notes.append(f"{others} loss.* params constant across trials (or aliases) not shown")
    prefix = next((k[: -len(names[k])] for k in params if names[k] != k), "")
    if prefix:
        notes.append(f"params without {prefix!r}")
    if notes:
        notes.append(f"all in {csv}")
    table = Table(title=title, caption="; ".join(notes) or None)
    for header in fixed:
        table.add_column(header, no_wrap=True)
    for key in params:
        table.add_column(_header(names[key]), no_wrap=True)
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    Console(file=file or sys.stdout, width=width).print(table)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _header(name: str) -> str:
    """A dotted name broken at dots over lines of about :data:`_HEADER_WIDTH` characters."""
    lines = [""]
    for part in name.split("."):
        piece = part if not lines[-1] else "." + part
        if lines[-1] and len(lines[-1]) + len(piece) > _HEADER_WIDTH:
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def _width(header: str, values: Sequence[str]) -> int:
    return max([len(line) for line in header.splitlines()] + [len(v) for v in values])


def print_importances(importances: Importances, file: Any = None) -> None:
    """Rich table of the importances, or the reason there are none; then one table per
    ``choice`` option, of the params inside it."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=file or sys.stdout, width=120)
    if not importances.values:
        console.print(Text(f"parameter importances: {importances.message}"))
    else:
        title = (
            f"Parameter importances (fANOVA, {importances.n_trials} finished trials) "
            f"for the {importances.objective}"
        )
        console.print(_importance_table(title, importances.values))
        if importances.skipped:
            console.print(Text(f"not used: {', '.join(sorted(importances.skipped))}"))
    for option, inside in importances.options.items():
        if inside.values:
            title = f"inside {option} ({inside.n_trials} trials)"
            console.print(_importance_table(title, inside.values))


def _importance_table(title: str, values: dict[str, float]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    table.add_column("param")
    table.add_column("importance", justify="right")
    table.add_column("")
    for key, value in values.items():
        table.add_row(Text(key), f"{value:.3f}", "#" * round(30 * value))
    return table


def status_summary(trials: Sequence[TrialRecord]) -> str:
    """``5 finished, 1 failed``: how many trials are in each run status."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials yet"
