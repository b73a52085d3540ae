"""The report's files: written into a folder, logged on the search's parent run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tune_losses.report.figures import plot_curves, plot_importances, plot_schedules
from tune_losses.report.html import report_html
from tune_losses.report.importances import Importances, param_importances
from tune_losses.report.trust import Trust, measure_trust, rungs_of
from tune_losses.tracking import (
    CONFIRM_FILE,
    CURVE_METRIC,
    LEADERBOARD,
    PREDICTIONS,
    REPORT_DIR,
    ConfirmOutcome,
    TrialRecord,
    confirm_rows,
    leaderboard_csv,
    leaderboard_rows,
    weight_histories,
)

SCHEDULE_TRIALS = 5
HTML_FILE = "report.html"


def write_report(
    client: MlflowClient,
    parent: Run,
    trials: Sequence[TrialRecord],
    out: Path,
    *,
    top: int | None = None,
    importances: Importances | None = None,
    trust: Trust | None = None,
    confirm: ConfirmOutcome | None = None,
) -> list[Path]:
    """Write the report's files into ``out`` (nothing printed); returns them.

    ``leaderboard.csv``, ``trust.json`` (:func:`search_trust`), ``importances.json`` (at
    the rung the search trusts), ``curves.png``, ``importances.png`` (when
    there are importances), ``schedules.png`` (the applied loss weights of the top trials)
    and ``report.html`` (all of it on one self-contained page). The search calls it at its
    end, ``python -m tune_losses.report`` at any time. Baselines (``search.baselines``)
    are in the leaderboard, not in the importances; ``confirm``: the confirm stage's
    outcome, also written as ``confirm.csv`` and shown in the HTML.
    """
    trust = trust or search_trust(parent, trials)
    searched = [t for t in trials if not t.baseline]
    importances = importances or param_importances(searched, budget=trust.trusted)
    name = parent.info.run_name or parent.info.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / LEADERBOARD).write_text(leaderboard_csv(leaderboard_rows(trials)))
    written = [out / LEADERBOARD]
    (out / "trust.json").write_text(json.dumps(trust.to_json(), indent=2) + "\n")
    written.append(out / "trust.json")
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
    best = next((t for t in searched if math.isfinite(t.best)), None)
    if best is not None:
        picture = _download(client, best.run_id, PREDICTIONS, out, "best_predictions.png")
        if picture is not None:
            pictures.append(picture)
            written.append(picture)
    if confirm is not None:
        (out / CONFIRM_FILE).write_text(leaderboard_csv(confirm_rows(confirm)))
        written.append(out / CONFIRM_FILE)
    html = report_html(parent, trials, importances, pictures, trust.sentence(), confirm)
    (out / HTML_FILE).write_text(html, encoding="utf-8")
    written.append(out / HTML_FILE)
    return written


def search_trust(parent: Run, trials: Sequence[TrialRecord]) -> Trust:
    """:func:`~tune_losses.report.trust.measure_trust` at the search's ASHA rungs (from its
    parent's params) below the longest run's epochs."""
    searched = [t for t in trials if not t.baseline]  # a baseline is no searched configuration
    longest = max((t.history[-1][0] for t in searched if t.history), default=0)
    return measure_trust(searched, rungs_of(parent.data.params, longest))


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


def log_report(client: MlflowClient, parent: Run, files: Sequence[Path]) -> None:
    """Log ``files`` as artifacts of the parent run under ``report/`` (replacing earlier ones)."""
    for path in files:
        client.log_artifact(parent.info.run_id, str(path), REPORT_DIR)
