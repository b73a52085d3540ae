"""The end of a search: the winner's config, the leaderboard, the parent's story and report.

Runs on the driver once every trial has ended (and again, idempotently, on a ``--resume``
of a search killed during it): nothing here starts Ray or trains.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tune import state as run_state
from tune_losses.tune.confirm import confirmed_best
from tune_losses.tune.state import SearchRun


def best_config(result: Any, scheduler: str) -> dict[str, Any]:
    """The winner's experiment; after PBT/PB2 the lineage it ran (from its last checkpoint)
    written as phases, so a retrain replays its weights and LR step for step."""
    from tune_losses.tune.trainable import EXPERIMENT_KEY, trial_values

    experiment = trial_values(result.config)[EXPERIMENT_KEY]
    if scheduler not in ("pbt", "pb2") or result.checkpoint is None:
        return experiment
    from tune_losses.engine import read_summary
    from tune_losses.tune.pbt import learned_experiment

    with result.checkpoint.as_directory() as directory:
        summary = read_summary(directory) or {}
    return learned_experiment(experiment, summary) if summary.get("lineage") else experiment


def summarize(
    search: SearchRun, tracker: Any, results: Any, scheduler: str, confirmed: Any = None
) -> int:
    """Leaderboard (from MLflow) printed and logged, best config (or, for several metrics,
    one per Pareto-front member and ``pareto.csv``) written; returns the exit code. The best
    trial is the best that is no baseline; after a confirm stage (``confirmed``: its outcome
    and plan) ``best_config.yaml`` is the arm with the best confirmed mean."""
    from tune_losses.config import best_metric_name
    from tune_losses.report import print_leaderboard
    from tune_losses.tracking import (
        LEADERBOARD,
        leaderboard_csv,
        leaderboard_rows,
        load_trials,
        ranking,
    )

    parent = tracker.client.get_run(tracker.parent_id)
    trials = load_trials(tracker.client, parent)
    objectives = ranking(parent)
    by_id = {(r.metrics or {}).get("trial_id"): r for r in results}
    ok = [t for t in trials if t.status == "FINISHED" and math.isfinite(t.best) and not t.baseline]
    winners = [t for t in ok if t.pareto] if len(objectives) > 1 else ok[:1]
    configs = {}
    for t in winners:
        if t.trial_id in by_id:
            name = f"best_config_{t.trial_id}.yaml" if len(objectives) > 1 else "best_config.yaml"
            winner = best_config(by_id[t.trial_id], scheduler)
            configs[name] = yaml.safe_dump(winner, sort_keys=False)
    best = {}
    if ok:
        best = {best_metric_name(objectives[0][0]): ok[0].best, "best_trial": ok[0].trial_id}
    if confirmed is not None:
        configs, best = confirmed_best(confirmed, configs, best)
    if len(objectives) > 1:
        configs["pareto.csv"] = leaderboard_csv(leaderboard_rows(winners))
    tracker.attach({k: v for k, v in configs.items() if k != "best_config.yaml"})
    tracker.finish(leaderboard_csv(leaderboard_rows(trials)), configs.get("best_config.yaml"), best)
    out = tell_story(search, tracker, trials, confirmed)
    csv = out / LEADERBOARD if out else f"{LEADERBOARD} of run {tracker.parent_id}"
    shown = ", ".join(f"{metric} {mode}" for metric, mode in objectives)
    print_leaderboard(trials, f"Leaderboard of {search.name} (best {shown})", csv=csv)
    for file, text in configs.items():
        what = {".csv": "table"}.get(Path(file).suffix, "best config")
        print(f"{what}: {run_state.write_text(search.run_dir, file, text)}")
    unconfirmed = False
    if confirmed is not None:
        from tune_losses.tracking import confirm_story

        print("\n".join(confirm_story(confirmed[0], confirmed[1]["split"])).strip())
        unconfirmed = confirmed[0].winner is None and bool(confirmed[1]["arms"])
    uri = search.state["tracking_uri"]
    print(f"review it:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    if not ok:
        say_first_failure(tracker, "no trial finished")
    elif unconfirmed:
        what = "the confirm stage ranked no arm (best_config.yaml is the search's best)"
        say_first_failure(tracker, what, confirm=True)
    return 0 if ok and not unconfirmed else 1


def tell_story(
    search: SearchRun, tracker: Any, trials: list[Any], confirmed: Any = None
) -> Path | None:
    """The parent's description (with the confirm stage's section), counts and the report's
    files (plots, ``report.html``),
    written to ``<run folder>/report`` on local storage; returns that folder (None when
    the report could not be written: the search's results stand, so it only warns)."""
    from mlflow.exceptions import MlflowException

    from tune_losses.report import log_report, search_trust, write_report
    from tune_losses.tracking import BEST_CONFIG, REPORT_DIR, TRIALS_DUPLICATE, confirm_story
    from tune_losses.tune.intensify import DONE_FILE

    config = Path(search.run_dir) / BEST_CONFIG
    if search.local:
        retrain = f"python -m tune_losses.train --config {shlex.quote(str(config))}"
    else:
        retrain = (
            f"MLFLOW_TRACKING_URI={shlex.quote(search.state['tracking_uri'])} mlflow artifacts "
            f"download --run-id {tracker.parent_id} --artifact-path {BEST_CONFIG} --dst-path .\n"
            f"python -m tune_losses.train --config {BEST_CONFIG}"
        )
    command = search.state.get("command", f"python -m tune_losses.search --space {search.name}")
    try:
        parent = tracker.client.get_run(tracker.parent_id)
        trust = search_trust(parent, trials)
        notes, counts = [f"What the search can trust: {trust.sentence()}."], {}
        if run_state.has_file(search.run_dir, DONE_FILE):  # what the searcher handed out
            done = json.loads(run_state.read_text(search.run_dir, DONE_FILE))
            counts[TRIALS_DUPLICATE] = float(done.get("duplicates", 0))
            if counts[TRIALS_DUPLICATE]:
                notes.append(
                    f"{counts[TRIALS_DUPLICATE]:.0f} proposals repeated a configuration "
                    "already trained: Optuna was told its stored value, nothing was retrained."
                )
        outcome, sections = None, []
        if confirmed is not None:
            outcome, sections = confirmed[0], confirm_story(confirmed[0], confirmed[1]["split"])
        tracker.tell_story(trials, command, retrain, notes=notes, counts=counts, sections=sections)
        with contextlib.ExitStack() as stack:
            if search.local:
                out = Path(search.run_dir) / REPORT_DIR
            else:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            files = write_report(tracker.client, parent, trials, out, trust=trust, confirm=outcome)
            log_report(tracker.client, parent, files)
    except (MlflowException, OSError, ValueError, RuntimeError) as exc:
        print(
            f"warning: the search's report was not written: {exc}".splitlines()[0], file=sys.stderr
        )
        return None
    return out if search.local else None


def say_first_failure(tracker: Any, what: str, confirm: bool = False) -> None:
    """Why a search exits 1 (``what``) and the first failed run's reason (of the confirm
    runs only, with ``confirm``): one line on stderr."""
    from tune_losses.tracking import CONFIRM_TAG, failure_reasons

    tag = CONFIRM_TAG if confirm else ""
    reasons = failure_reasons(tracker.client, tracker.experiment_id, tracker.parent_id, tag)
    first = f"; the first failure: {reasons[0]}" if reasons else ""
    print(f"error: {what}{first}", file=sys.stderr)
