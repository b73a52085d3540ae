"""The parent run's story: its markdown description, trial counts and links to runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from tune_losses.config import best_metric_name
from tune_losses.tracking.leaderboard import (
    format_best,
    searched_params,
    short_names,
    short_value,
)
from tune_losses.tracking.names import (
    CURVE_METRIC,
    EPOCHS_REPEATED,
    EPOCHS_SPENT,
    LEADERBOARD,
    REPORT_DIR,
    TRIALS_COMPLETED,
    TRIALS_FAILED,
    TRIALS_PRUNED,
    TRIALS_REPEATED,
)
from tune_losses.tracking.readers import TrialRecord

STORY_TOP = 5


def trial_counts(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """How the trials ended: failed (error), pruned (stopped by ASHA), completed (the rest:
    ran all epochs or stopped early on their own), and the epochs trained in all."""
    failed = sum(t.status == "FAILED" or t.stop_reason.startswith("error") for t in trials)
    pruned = sum(t.stop_reason == "asha" and t.status != "FAILED" for t in trials)
    epochs = sum(int(t.epochs_run) if t.epochs_run.isdigit() else len(t.history) for t in trials)
    counts = {
        TRIALS_COMPLETED: float(len(trials) - failed - pruned),
        TRIALS_PRUNED: float(pruned),
        TRIALS_FAILED: float(failed),
        EPOCHS_SPENT: float(epochs),
    }
    repeats = [t for t in trials if t.repeat_of and not t.baseline]  # not a baseline's seeds
    if repeats:  # runs of a contender at further seeds; their epochs are in EPOCHS_SPENT
        counts[TRIALS_REPEATED] = float(len(repeats))
        counts[EPOCHS_REPEATED] = float(
            sum(int(t.epochs_run) if t.epochs_run.isdigit() else len(t.history) for t in repeats)
        )
    return counts


def run_link(experiment_id: str, run_id: str) -> str:
    """The MLflow UI's address of a run, relative to the UI's root (works in a description)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def search_story(
    trials: Sequence[TrialRecord],
    experiment_id: str,
    *,
    reproduce: str,
    retrain: str,
    top: int = STORY_TOP,
    notes: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> str:
    """The parent run's markdown description: the winner with a link to its run, how the
    trials ended, the ``top`` trials with their searched values and stop reasons, and the
    commands that reproduce the search and retrain the winner; ``notes`` (a line each: what
    the search can trust, duplicates answered) after the counts; ``sections`` (markdown
    lines: the confirm stage) after the top trials. ``trials`` are best first; their best
    value is named after the search's metric (``best_train_loss``). Baselines
    (``search.baselines``) are never the best trial: the best one is compared with it."""
    counts = trial_counts(trials)
    metric = trials[0].metric if trials else CURVE_METRIC
    lines = []
    best = next((t for t in trials if math.isfinite(t.best) and not t.baseline), None)
    base = next((t for t in trials if math.isfinite(t.best) and t.baseline), None)
    if best is None:
        lines.append(f"**No trial reported a {metric}.**")
    else:
        link = run_link(experiment_id, best.run_id)
        seeds = ""
        if len(best.seeds) > 1:
            spread = statistics.stdev(best.seeds)
            values = ", ".join(f"{v:.2f}" for v in best.seeds)
            seeds = f", the mean of {len(best.seeds)} seeds ({values}; sd {spread:.2f})"
        lines.append(
            f"**Best trial: [{best.name}]({link})**, {best_metric_name(metric)} "
            f"**{format_best(best.best, metric)}**{seeds} "
            f"(run `{best.run_id}`, {best.stop_reason or best.status.lower()})."
        )
    if base is not None:
        versus = f", {best.best - base.best:+.2f} for the best trial" if best is not None else ""
        lines.append(
            f"Best baseline: [{base.name}]({run_link(experiment_id, base.run_id)}), "
            f"{format_best(base.best, metric)}{versus} (search values: `search.confirm` "
            "trains both again at fresh seeds for an interval)."
        )
    lines.append(
        f"{len(trials)} trials: {counts[TRIALS_COMPLETED]:.0f} completed, "
        f"{counts[TRIALS_PRUNED]:.0f} pruned by ASHA, {counts[TRIALS_FAILED]:.0f} failed; "
        f"{counts[EPOCHS_SPENT]:.0f} epochs trained."
    )
    if TRIALS_REPEATED in counts:
        lines.append(
            f"{counts[TRIALS_REPEATED]:.0f} of them repeated a contender at another seed "
            f"({counts[EPOCHS_REPEATED]:.0f} epochs) before it was declared the best."
        )
    lines += list(notes)
    searched = searched_params(trials)
    names = short_names(searched)
    shown = trials[:top]
    if shown:
        header = ["#", "trial", best_metric_name(metric), "ended", "epochs"]
        header += [names[k] for k in searched]
        lines += ["", f"### Top {len(shown)}", "", _md_row(header), _md_row(["---"] * len(header))]
        for rank, t in enumerate(shown, 1):
            value = format_best(t.best, metric)
            cells = [str(rank), f"[{t.name}]({run_link(experiment_id, t.run_id)})", value]
            cells += [t.stop_reason or t.status.lower(), t.epochs_run]
            cells += [short_value(t.params.get(k, "")) or "-" for k in searched]
            lines.append(_md_row(cells))
    lines += list(sections)
    lines += ["", "### Reproduce the search", "", "```bash", reproduce, "```"]
    lines += ["", "### Retrain the winner", "", "```bash", retrain, "```"]
    lines += [
        "",
        f"Every trial is in `{LEADERBOARD}`; plots and `report.html` under `{REPORT_DIR}/`.",
    ]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
