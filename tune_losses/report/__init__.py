"""``python -m tune_losses.report``: review a search from the MLflow store, without Ray.

Reads the layout :mod:`tune_losses.tracking` writes (one parent run tagged
``tune_losses.kind=search``, one child run per trial tagged ``mlflow.parentRunId``)
and works on a finished search as well as on one still running.

It prints a leaderboard (best ``best_val_mIoU`` first) and the parameter importances
(fANOVA, Hutter et al. 2014, through ``optuna.importance``) of the sampled ``loss.*``
params, and writes into ``--out``:

- ``leaderboard.csv``: every trial, every ``loss.*`` param;
- ``importances.json``: importances, the params and trials used, what was left out and why;
- ``curves.png``: ``val/mIoU`` per epoch, one line per trial, the best one highlighted;
- ``importances.png``: bar chart (only when importances could be computed).

The files are also logged on the parent run under ``report/`` unless ``--no-log``.

One job a file: :mod:`~tune_losses.report.importances` (how importances are computed,
in its docstring), :mod:`~tune_losses.report.figures`, :mod:`~tune_losses.report.tables`,
:mod:`~tune_losses.report.trust` (rank lines, the noise ceiling),
:mod:`~tune_losses.report.html`, :mod:`~tune_losses.report.files` (write and log them) and
:mod:`~tune_losses.report.cli`; import their names from here.

Example:
    python -m tune_losses.report                                # latest search, sqlite:///mlruns.db
    python -m tune_losses.report --run aux_weight-20250101-120000 --top 10
    python -m tune_losses.report --tracking-uri sqlite:///runs.db --run 3f2a... --no-log
"""

from __future__ import annotations

from tune_losses.report.cli import build_parser, default_out, main, report
from tune_losses.report.figures import plot_curves, plot_importances, plot_schedules
from tune_losses.report.files import (
    HTML_FILE,
    SCHEDULE_TRIALS,
    log_report,
    search_trust,
    write_report,
)
from tune_losses.report.html import report_html
from tune_losses.report.importances import (
    MIN_TRIALS,
    Importances,
    equal_budget,
    param_importances,
)
from tune_losses.report.tables import (
    TERMINAL_ROWS,
    TERMINAL_WIDTH,
    print_importances,
    print_leaderboard,
    status_summary,
)
from tune_losses.report.trust import Trust, measure_trust, spearman
from tune_losses.tracking import TrialRecord

__all__ = [
    "HTML_FILE",
    "MIN_TRIALS",
    "SCHEDULE_TRIALS",
    "TERMINAL_ROWS",
    "TERMINAL_WIDTH",
    "Importances",
    "TrialRecord",
    "Trust",
    "build_parser",
    "default_out",
    "equal_budget",
    "log_report",
    "main",
    "measure_trust",
    "param_importances",
    "plot_curves",
    "plot_importances",
    "plot_schedules",
    "print_importances",
    "print_leaderboard",
    "report",
    "report_html",
    "search_trust",
    "spearman",
    "status_summary",
    "write_report",
]
