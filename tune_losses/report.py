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

How importances are computed: an Optuna study is rebuilt in memory from the FINISHED
children that have a ``best_val_mIoU``. MLflow keeps params as strings, so a param whose
values all parse as finite numbers gets ``FloatDistribution(min, max)`` over the observed
values and any other gets ``CategoricalDistribution`` of the observed strings. Only params
present in every one of those trials are used (a conditional param, e.g. the weight of a
term that only exists in one branch of a ``choice``, is left out; its branch's ``.choice``
param still carries the effect). Params with a single observed value carry no signal and
are left out; params whose values equal another's in every trial (a ``choice`` label and
the value it resolves to) are aliases and only the shortest name is kept.

Example:
    python -m tune_losses.report                                # latest search, sqlite:///mlruns.db
    python -m tune_losses.report --run aux_weight-20250101-120000 --top 10
    python -m tune_losses.report --tracking-uri sqlite:///runs.db --run 3f2a... --no-log
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune_losses.tracking import (
    BEST_METRIC,
    CURVE_METRIC,
    LEADERBOARD,
    PREDICTIONS,
    REPORT_DIR,
    TrackingError,
    TrialRecord,
    find_parent,
    leaderboard_csv,
    leaderboard_rows,
    load_trials,
    open_client,
    searched_params,
    short_names,
    short_value,
    weight_histories,
)

MIN_TRIALS = 3
SCHEDULE_TRIALS = 5
HTML_FILE = "report.html"


@dataclass
class Importances:
    """Outcome of :func:`param_importances`; ``values`` is empty when ``message`` says why."""

    values: dict[str, float]
    n_trials: int
    params: list[str]
    skipped: dict[str, str]
    aliases: dict[str, list[str]]
    evaluator: str
    message: str | None = None
    budget: int | None = None

    @property
    def objective(self) -> str:
        """What the importances explain: the best val mIoU within the same epoch budget."""
        where = f" up to epoch {self.budget}" if self.budget else ""
        return f"best {CURVE_METRIC}{where} (the epochs every trial ran)"

    def to_json(self) -> dict[str, Any]:
        return {
            "evaluator": self.evaluator,
            "objective": self.objective,
            "budget_epochs": self.budget,
            "n_trials": self.n_trials,
            "params": self.params,
            "importances": self.values,
            "skipped_params": self.skipped,
            "aliases": self.aliases,
            "message": self.message,
        }


# --------------------------------------------------------------------------- reading


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m tune_losses.report``."""
    p = argparse.ArgumentParser(
        prog="python -m tune_losses.report",
        description="Leaderboard, parameter importances and curves of a search, from MLflow.",
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow tracking URI")
    p.add_argument("--experiment", default="tune_losses", help="MLflow experiment name")
    p.add_argument(
        "--run", help="parent run id or run name of the search (default: the latest search)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: report/<parent run name>)")
    p.add_argument(
        "--top", type=_positive_int, metavar="N", help="show and plot only the N best trials"
    )
    p.add_argument("--no-log", action="store_true", help="do not log the files on the parent run")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# --------------------------------------------------------------------------- analysis


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def equal_budget(trials: Sequence[TrialRecord]) -> tuple[int, dict[str, float]]:
    """The highest epoch every trial with a ``val/mIoU`` history reached, and each such
    trial's best ``val/mIoU`` up to it: values comparable across trials that ASHA stopped
    at different rungs (their ``best_val_mIoU`` would rank survival, not the weights)."""
    with_curve = [t for t in trials if t.history]
    if not with_curve:
        return 0, {}
    budget = min(t.history[-1][0] for t in with_curve)
    values = {}
    for t in with_curve:
        seen = [v for step, v in t.history if step <= budget and math.isfinite(v)]
        if seen:
            values[t.run_id] = max(seen)
    return budget, values


def param_importances(trials: Sequence[TrialRecord], seed: int = 0) -> Importances:
    """fANOVA importances of the ``loss.*`` params for the best ``val/mIoU`` at equal budget
    (:func:`equal_budget`).

    Rebuilds an in-memory Optuna study from the FINISHED trials (see the module
    docstring for the distributions and which params are used) and calls
    ``optuna.importance.get_param_importances`` with a seeded
    ``FanovaImportanceEvaluator`` (Hutter, Hoos, Leyton-Brown 2014, "An Efficient
    Approach for Assessing Hyperparameter Importance"). Never raises for too little
    data: ``message`` says why ``values`` is empty.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    evaluator_name = "FanovaImportanceEvaluator"
    finished = [t for t in trials if t.status == "FINISHED"]
    budget, at_budget = equal_budget(finished)
    done = [t for t in finished if t.run_id in at_budget]
    result = Importances({}, len(done), [], {}, {}, evaluator_name, budget=budget or None)
    if len(done) < MIN_TRIALS:
        result.message = (
            f"importances need >= {MIN_TRIALS} finished trials with a {CURVE_METRIC} "
            f"history (have {len(done)})"
        )
        return result
    all_keys = sorted({k for t in done for k in t.params})
    common = [k for k in all_keys if all(k in t.params for t in done)]
    for key in all_keys:
        if key not in common:
            result.skipped[key] = "conditional (missing in some finished trials)"
    varying = []
    for key in common:
        if len({t.params[key] for t in done}) > 1:
            varying.append(key)
        else:
            result.skipped[key] = "constant"
    groups: dict[tuple[str, ...], list[str]] = {}
    for key in varying:
        groups.setdefault(tuple(t.params[key] for t in done), []).append(key)
    used = []
    for names in groups.values():
        names.sort(key=lambda n: (len(n), n))
        used.append(names[0])
        if len(names) > 1:
            result.aliases[names[0]] = names[1:]
    used.sort()
    result.params = used
    if not used:
        result.message = "no sampled loss.* param varies across the finished trials"
        return result

    distributions: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {t.run_id: {} for t in done}
    for key in used:
        numbers = [n for t in done if (n := _as_number(t.params[key])) is not None]
        if len(numbers) == len(done):
            distributions[key] = FloatDistribution(min(numbers), max(numbers))
            for t, n in zip(done, numbers, strict=True):
                values[t.run_id][key] = n
        else:
            distributions[key] = CategoricalDistribution(sorted({t.params[key] for t in done}))
            for t in done:
                values[t.run_id][key] = t.params[key]

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
        study.add_trials(
            [
                optuna.trial.create_trial(
                    value=at_budget[t.run_id],
                    params=values[t.run_id],
                    distributions=distributions,
                )
                for t in done
            ]
        )
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        raw = optuna.importance.get_param_importances(study, evaluator=evaluator, params=used)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        result.message = f"importances could not be computed: {exc}"
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)
    if any(not math.isfinite(v) for v in raw.values()):
        result.message = f"importances undefined (the {result.objective} does not vary)"
        return result
    result.values = {k: float(v) for k, v in raw.items()}
    return result


# --------------------------------------------------------------------------- output


def plot_curves(trials: Sequence[TrialRecord], path: Path, title: str = "") -> Path | None:
    """``val/mIoU`` per epoch, one line per trial, the first (best) trial highlighted.

    Returns None (and writes nothing) when no trial has a history yet.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with_curve = [t for t in trials if t.history]
    if not with_curve:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    others = [f"C{i}" for i in range(10) if i != 3]  # C3 (red) is the best trial's
    lines = []
    for rank, t in enumerate(with_curve):
        steps = [s for s, _ in t.history]
        vals = [v for _, v in t.history]
        if rank == 0:
            style = {"color": "C3", "lw": 2.5, "marker": "o", "ms": 4, "zorder": 3}
            label = f"{t.name} (best)"
        else:
            style = {"color": others[(rank - 1) % 9], "lw": 1, "marker": ".", "alpha": 0.7}
            label = t.name
        lines.append(ax.plot(steps, vals, label=label, **style)[0])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{CURVE_METRIC} (%)")
    ax.set_title(title or f"{CURVE_METRIC} per trial")
    ax.grid(alpha=0.3)
    ax.legend(handles=lines[:12], fontsize="small", loc="lower right")
    fig.savefig(path, dpi=110)
    return path


def plot_importances(importances: Importances, path: Path) -> Path | None:
    """Horizontal bar chart of the importances, largest on top; None when there are none."""
    from matplotlib.figure import Figure

    if not importances.values:
        return None
    items = sorted(importances.values.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title(
        f"parameter importances ({importances.n_trials} finished trials, "
        f"epoch budget {importances.budget})"
    )
    ax.set_xlim(0, max(1.0, max(v for _, v in items)))
    fig.savefig(path, dpi=110)
    return path


TERMINAL_WIDTH = 120
TERMINAL_ROWS = 10
_NAME_WIDTH = 24
_VALUE_WIDTH = 12
_HEADER_WIDTH = 14


def plot_schedules(
    schedules: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path, title: str = ""
) -> Path | None:
    """The applied weight of each loss term per epoch, one panel per ``head/term``, one line
    per trial (``{trial: {"decode/dice": [(epoch, weight)]}}``, best trial first, drawn
    red). Shows what a schedule really did; None when no trial logged a weight."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    terms = sorted({term for weights in schedules.values() for term in weights})
    if not terms:
        return None
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = ["C3"] + [f"C{i}" for i in range(10) if i != 3]
    for ax, term in zip(axes, terms, strict=False):
        for rank, (trial, weights) in enumerate(schedules.items()):
            points = weights.get(term)
            if points:
                style = {
                    "lw": 2.5 if rank == 0 else 1.2,
                    "marker": ".",
                    "alpha": 1 if rank == 0 else 0.8,
                }
                ax.plot(
                    [s for s, _ in points],
                    [w for _, w in points],
                    color=colours[rank % 10],
                    label=trial,
                    **style,
                )
        ax.set_title(term, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("weight (epoch mean)")
        ax.grid(alpha=0.3)
    for ax in axes[len(terms) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize="small"
    )
    fig.suptitle(title or "applied loss weights per epoch")
    fig.savefig(path, dpi=110)
    return path


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
    :data:`TERMINAL_ROWS`), how each ended, its best val mIoU and the searched values only
    (params that vary, named without their shared prefix), as many as fit; the caption
    points to ``csv`` for the rest. The report and the search's end summary print it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = top or TERMINAL_ROWS
    shown = list(trials[:rows])
    searched = searched_params(trials)
    names = short_names(searched)
    fixed = ["#", "trial", "ended", "epochs", "best mIoU"]
    cells = [
        [
            str(rank),
            _clip(t.name, _NAME_WIDTH),
            t.stop_reason or t.status,
            t.epochs_run,
            f"{t.best:.2f}" if math.isfinite(t.best) else "-",
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
    """Rich table of the importances, or the reason there are none."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file or sys.stdout, width=120)
    if not importances.values:
        console.print(Text(f"parameter importances: {importances.message}"))
        return
    table = Table(
        title=f"Parameter importances (fANOVA, {importances.n_trials} finished trials) "
        f"for the {importances.objective}"
    )
    table.add_column("param")
    table.add_column("importance", justify="right")
    table.add_column("")
    for key, value in importances.values.items():
        table.add_row(Text(key), f"{value:.3f}", "#" * round(30 * value))
    console.print(table)
    if importances.skipped:
        console.print(Text(f"not used: {', '.join(sorted(importances.skipped))}"))


def default_out(parent: Run) -> Path:
    """``report/<parent run name>``, the name made safe for a path."""
    name = parent.info.run_name or parent.info.run_id
    return Path("report") / (re.sub(r"[^\w.-]+", "_", name).strip("._") or parent.info.run_id)


# --------------------------------------------------------------------------- CLI


def report(
    client: MlflowClient,
    parent: Run,
    out: Path,
    *,
    top: int | None = None,
) -> tuple[list[TrialRecord], Importances, list[Path]]:
    """Print the leaderboard and importances of ``parent``'s search and write the files.

    Returns the trials (best first), the importances and the files written into ``out``.
    """
    trials = load_trials(client, parent)
    name = parent.info.run_name or parent.info.run_id
    print(
        f"search {name} ({parent.info.run_id}, {parent.info.status.lower()}): "
        f"{status_summary(trials)}"
    )
    print_leaderboard(
        trials, f"Leaderboard of {name} (best val mIoU, %)", top, csv=out / LEADERBOARD
    )
    importances = param_importances(trials)
    print_importances(importances)
    written = write_report(client, parent, trials, out, top=top, importances=importances)
    print(f"wrote to {out}:")
    names = ", ".join(p.name for p in written)
    print(textwrap.fill(names, TERMINAL_WIDTH, initial_indent="  ", subsequent_indent="  "))
    return trials, importances, written


def status_summary(trials: Sequence[TrialRecord]) -> str:
    """``5 finished, 1 failed``: how many trials are in each run status."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials yet"


def write_report(
    client: MlflowClient,
    parent: Run,
    trials: Sequence[TrialRecord],
    out: Path,
    *,
    top: int | None = None,
    importances: Importances | None = None,
) -> list[Path]:
    """Write the report's files into ``out`` (nothing printed); returns them.

    ``leaderboard.csv``, ``importances.json``, ``curves.png``, ``importances.png`` (when
    there are importances), ``schedules.png`` (the applied loss weights of the top trials)
    and ``report.html`` (all of it on one self-contained page). The search calls it at its
    end, ``python -m tune_losses.report`` at any time.
    """
    importances = importances or param_importances(trials)
    name = parent.info.run_name or parent.info.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / LEADERBOARD).write_text(leaderboard_csv(leaderboard_rows(trials)))
    written = [out / LEADERBOARD]
    data = {"parent_run_id": parent.info.run_id, "parent_run_name": name}
    data.update(importances.to_json())
    (out / "importances.json").write_text(json.dumps(data, indent=2) + "\n")
    written.append(out / "importances.json")
    shown = trials[:top] if top else trials
    schedules = {
        t.name: weight_histories(client, t.run_id) for t in trials[: top or SCHEDULE_TRIALS]
    }
    plots = [
        plot_curves(shown, out / "curves.png", f"{CURVE_METRIC} per epoch: {name}"),
        plot_importances(importances, out / "importances.png"),
        plot_schedules(schedules, out / "schedules.png", f"applied loss weights: {name}"),
    ]
    written += [path for path in plots if path is not None]
    pictures = [path for path in plots if path is not None]
    best = next((t for t in trials if math.isfinite(t.best)), None)
    if best is not None:
        picture = _download(client, best.run_id, PREDICTIONS, out, "best_predictions.png")
        if picture is not None:
            pictures.append(picture)
            written.append(picture)
    html = report_html(parent, trials, importances, pictures)
    (out / HTML_FILE).write_text(html, encoding="utf-8")
    written.append(out / HTML_FILE)
    return written


def _download(client: MlflowClient, run_id: str, name: str, out: Path, as_name: str) -> Path | None:
    """A run's artifact ``name`` copied to ``out/as_name``; None when the run has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # no progress bar on stderr
    with tempfile.TemporaryDirectory() as tmp, _environ(quiet):
        got = Path(client.download_artifacts(run_id, name, tmp))
        target = out / as_name
        shutil.copyfile(got, target)
    return target


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then put them back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def report_html(
    parent: Run,
    trials: Sequence[TrialRecord],
    importances: Importances,
    pictures: Sequence[Path],
) -> str:
    """One self-contained HTML page: the leaderboard (every trial, the searched params),
    the importances and every picture embedded as base64 PNG, for people who would rather
    look than read; opens from a file, a mail or MLflow's artifact view alike."""
    name = parent.info.run_name or parent.info.run_id
    searched = searched_params(trials)
    head = ["#", "trial", "run id", "status", "ended", "epochs", BEST_METRIC, *searched]
    rows = []
    for rank, t in enumerate(trials, 1):
        best = f"{t.best:.2f}" if math.isfinite(t.best) else "-"
        cells = [str(rank), t.name, t.run_id, t.status, t.stop_reason, t.epochs_run, best]
        rows.append(cells + [short_value(t.params.get(k, "")) for k in searched])
    parts = [
        f"<h1>Search {escape(name)}</h1>",
        f"<p>run <code>{escape(parent.info.run_id)}</code>, {escape(parent.info.status.lower())}: "
        f"{escape(status_summary(trials))}</p>",
        "<h2>Leaderboard</h2>",
        _html_table(head, rows),
        "<h2>Parameter importances</h2>",
    ]
    if importances.values:
        items = [[k, f"{v:.3f}"] for k, v in importances.values.items()]
        parts.append(_html_table(["param", "importance (fANOVA)"], items))
    else:
        parts.append(f"<p>{escape(importances.message or 'none')}</p>")
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


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
    )
    return f"<table>\n<tr>{th}</tr>\n{body}</table>"


def log_report(client: MlflowClient, parent: Run, files: Sequence[Path]) -> None:
    """Log ``files`` as artifacts of the parent run under ``report/`` (replacing earlier ones)."""
    for path in files:
        client.log_artifact(parent.info.run_id, str(path), REPORT_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on a user error, 1 when logging the files fails."""
    args = build_parser().parse_args(argv)
    try:
        client = open_client(args.tracking_uri)
        parent = find_parent(client, args.experiment, args.run)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: {args.tracking_uri}: {exc.message.splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out(parent)
    _, _, files = report(client, parent, out, top=args.top)
    if args.no_log:
        return 0
    try:
        log_report(client, parent, files)
    except (MlflowException, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(
            f"error: logging the report on run {parent.info.run_id} failed ({first}); "
            f"the files are in {out}, --no-log skips logging",
            file=sys.stderr,
        )
        return 1
    print(f"logged them on run {parent.info.run_id} under report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
