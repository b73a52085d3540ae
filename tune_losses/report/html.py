"""The report's one self-contained HTML page."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from mlflow.entities import Run

from tune_losses.config import best_metric_name
from tune_losses.report.importances import Importances
from tune_losses.report.tables import status_summary
from tune_losses.tracking import (
    CURVE_METRIC,
    ConfirmOutcome,
    TrialRecord,
    confirm_verdict,
    format_best,
    searched_params,
    short_value,
)


def report_html(
    parent: Run,
    trials: Sequence[TrialRecord],
    importances: Importances,
    pictures: Sequence[Path],
    trust: str = "",
    confirm: ConfirmOutcome | None = None,
) -> str:
    """One self-contained HTML page: the leaderboard (every trial, the searched params),
    the importances and every picture embedded as base64 PNG, for people who would rather
    look than read; opens from a file, a mail or MLflow's artifact view alike. Baselines
    are marked in their own column; ``confirm`` adds the confirm stage's arms and gain."""
    name = parent.info.run_name or parent.info.run_id
    searched = searched_params(trials)
    metric = trials[0].metric if trials else CURVE_METRIC
    head = ["#", "trial", "run id", "status", "ended", "epochs", best_metric_name(metric)]
    baselines = any(t.baseline for t in trials)
    head += ["baseline"] * baselines + searched
    rows = []
    for rank, t in enumerate(trials, 1):
        best = format_best(t.best, metric)
        cells = [str(rank), t.name, t.run_id, t.status, t.stop_reason, t.epochs_run, best]
        cells += [t.baseline] * baselines
        rows.append(cells + [short_value(t.params.get(k, "")) for k in searched])
    parts = [
        f"<h1>Search {escape(name)}</h1>",
        f"<p>run <code>{escape(parent.info.run_id)}</code>, {escape(parent.info.status.lower())}: "
        f"{escape(status_summary(trials))}</p>",
        "<h2>Leaderboard</h2>",
        _html_table(head, rows),
        *(_confirm_html(confirm) if confirm is not None else []),
        "<h2>What the search can trust</h2>",
        f"<p>{escape(trust or 'not measured')}</p>",
        "<h2>Parameter importances</h2>",
        f"<p>for the {escape(importances.objective)}</p>",
    ]
    for title, imp in [("", importances), *importances.options.items()]:
        if title:
            parts.append(f"<h3>inside {escape(title)} ({imp.n_trials} trials)</h3>")
        if imp.values:
            items = [[k, f"{v:.3f}"] for k, v in imp.values.items()]
            parts.append(_html_table(["param", "importance (fANOVA)"], items))
        else:
            parts.append(f"<p>{escape(imp.message or 'none')}</p>")
    for picture in pictures:
        data = base64.b64encode(picture.read_bytes()).decode("ascii")
        parts.append(f"<h2>{escape(picture.stem.replace('_', ' '))}</h2>")
        parts.append(f'<img alt="{escape(picture.name)}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(name)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _confirm_html(outcome: ConfirmOutcome) -> list[str]:
    """The confirm stage: each arm's mean and sd, then :func:`confirm_verdict` (arms not
    ranked, the winner, the paired gain)."""
    head = ["arm", "baseline", "seeds", f"mean {outcome.metric}", "sd"]
    rows = [
        [a.label, a.baseline, str(a.scored), f"{a.mean:.2f}", f"{a.sd:.2f}"] for a in outcome.arms
    ]
    text = confirm_verdict(outcome)
    paragraphs = [f"<p>{escape(line.replace('**', ''))}</p>" for line in text]
    return ["<h2>Confirmed at fresh seeds</h2>", _html_table(head, rows), *paragraphs]


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
    )
    return f"<table>\n<tr>{th}</tr>\n{body}</table>"
