"""The confirm stage read back from MLflow: each arm's scores per seed, the winner, and the
paired gain of the best searched configuration over the best baseline with its interval."""

from __future__ import annotations

import ast
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tune_losses.tracking.leaderboard import ranking
from tune_losses.tracking.names import BASELINE_TAG, CONFIRM_TAG, PARENT_TAG, SEED_TAG
from tune_losses.tracking.readers import search_all

LEVEL = 0.95
GAIN = "confirm/gain"  # parent metrics: the paired gain and its interval's ends
GAIN_LOW = "confirm/gain_low"
GAIN_HIGH = "confirm/gain_high"
WINNER_MEAN = "confirm/winner_mean"  # parent metric: the winner's confirmed mean
WINNER_TAG = "confirm_winner"  # parent tag: the arm with the best confirmed mean
MIN_SEEDS = 2  # an arm scored at fewer seeds is not ranked: one draw is within seed noise


def paired_interval(diffs: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval of the mean of paired differences,
    ``mean(d) +- t_{(1+level)/2, n-1} sd(d) / sqrt(n)`` (Student 1908; e.g. Wasserman, *All
    of Statistics*, 2004, sec. 7.5 on paired comparisons); ``n >= 2`` differences."""
    from scipy.stats import t as student_t

    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired interval needs two or more differences, got {n}")
    mean = statistics.fmean(diffs)
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class ConfirmArm:
    """One confirmed configuration: its label (``t03``, ``base ce``) and score per seed."""

    label: str
    baseline: str = ""  # the baseline's name for a baseline's arm
    scores: dict[int, float] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        """How many of its seeds have a finite score."""
        return sum(math.isfinite(v) for v in self.scores.values())

    @property
    def ranked(self) -> bool:
        """Whether it was scored at :data:`MIN_SEEDS` seeds or more (only those can win)."""
        return self.scored >= MIN_SEEDS

    @property
    def mean(self) -> float:
        """The mean over its finite seed scores (nan with none)."""
        finite = [v for v in self.scores.values() if math.isfinite(v)]
        return statistics.fmean(finite) if finite else math.nan

    @property
    def sd(self) -> float:
        """The sample standard deviation over its finite seed scores (nan with fewer than 2)."""
        finite = [v for v in self.scores.values() if math.isfinite(v)]
        return statistics.stdev(finite) if len(finite) > 1 else math.nan


@dataclass
class ConfirmOutcome:
    """The arms best first, the winner, and the gain of the best searched arm over the best
    baseline paired over their common seeds (``gain``: mean, low, high; None without one)."""

    arms: list[ConfirmArm]
    metric: str
    winner: ConfirmArm | None
    searched: ConfirmArm | None
    baseline: ConfirmArm | None
    gain: tuple[float, float, float] | None
    pairs: int = 0


def load_confirm(client: MlflowClient, parent: Run, score: str) -> list[ConfirmArm]:
    """The confirm runs of ``parent`` (tagged ``confirm``) that ended, grouped by arm; each
    run's score is its last value of ``score`` (``val/mIoU``, ``test/mIoU``), nan for a run
    that failed (so an arm whose runs all failed is listed, unranked)."""
    pid = parent.info.run_id
    arms: dict[str, ConfirmArm] = {}
    for status in ("FAILED", "FINISHED"):  # a finished run of a seed wins over a failed one
        query = f"tags.`{PARENT_TAG}` = '{pid}' and attributes.status = '{status}'"
        for run in search_all(client, parent.info.experiment_id, query):
            tags = run.data.tags
            if CONFIRM_TAG not in tags or SEED_TAG not in tags:
                continue
            label = tags[CONFIRM_TAG]
            arm = arms.setdefault(label, ConfirmArm(label, tags.get(BASELINE_TAG, "")))
            seed = int(tags[SEED_TAG])
            value = (
                float(run.data.metrics.get(score, math.nan)) if status == "FINISHED" else math.nan
            )
            if math.isfinite(arm.scores.get(seed, math.nan)) and not math.isfinite(value):
                continue
            arm.scores[seed] = value
            arm.run_ids[seed] = run.info.run_id
    return list(arms.values())


def search_confirm(client: MlflowClient, parent: Run) -> ConfirmOutcome | None:
    """The confirm stage of a search, from its ``search.confirm`` param and its confirm runs
    (None for a search without one): what the report and the notebook show."""
    text = parent.data.params.get("search.confirm", "None")
    try:
        settings = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(settings, dict) or "split" not in settings:
        return None
    metric, mode = ranking(parent)[0]
    score = f"{settings['split']}/{metric.removeprefix('val/')}"
    return confirm_outcome(load_confirm(client, parent, score), score, mode)


def confirm_outcome(arms: Sequence[ConfirmArm], metric: str, mode: str = "max") -> ConfirmOutcome:
    """Rank the arms by confirmed mean (``mode``), name the winner, and pair the best
    searched arm with the best baseline over the seeds both have a finite score at.

    Only arms scored at :data:`MIN_SEEDS` seeds or more are ranked (the rest are listed
    last); a tie goes to the baseline (the change must earn its place), then by label."""
    sign = -1.0 if mode == "max" else 1.0

    def key(arm: ConfirmArm) -> tuple[bool, float, bool, str]:
        value = 0.0 if not arm.ranked else sign * arm.mean
        return not arm.ranked, value, not arm.baseline, arm.label

    ranked = sorted(arms, key=key)
    scored = [a for a in ranked if a.ranked]
    searched = next((a for a in scored if not a.baseline), None)
    baseline = next((a for a in scored if a.baseline), None)
    gain, pairs = None, 0
    if searched is not None and baseline is not None:
        seeds = sorted(
            s
            for s in searched.scores.keys() & baseline.scores.keys()
            if math.isfinite(searched.scores[s]) and math.isfinite(baseline.scores[s])
        )
        diffs = [searched.scores[s] - baseline.scores[s] for s in seeds]
        pairs = len(diffs)
        if pairs >= 2:
            gain = paired_interval(diffs)
    winner = scored[0] if scored else None
    return ConfirmOutcome(list(ranked), metric, winner, searched, baseline, gain, pairs)


def confirm_rows(outcome: ConfirmOutcome) -> list[dict[str, object]]:
    """``confirm.csv``: one row an arm, best first: its mean, sd, seeds and score per seed."""
    rows = []
    for rank, arm in enumerate(outcome.arms, 1):
        rows.append(
            {
                "rank": rank if arm.ranked else "",  # fewer than MIN_SEEDS scored
                "arm": arm.label,
                "baseline": arm.baseline,
                "seeds": arm.scored,
                f"mean_{outcome.metric}": arm.mean,
                f"sd_{outcome.metric}": arm.sd,
                "per_seed": " ".join(f"{s}:{v:.4f}" for s, v in sorted(arm.scores.items())),
            }
        )
    return rows


def confirm_story(outcome: ConfirmOutcome, split: str) -> list[str]:
    """The parent story's section: each arm's mean +- sd on ``split`` (seeds: those
    scored), then :func:`confirm_verdict`."""
    lines = ["", f"### Confirmed at fresh seeds ({outcome.metric} on the {split} split)", ""]
    lines += ["| arm | seeds | mean | sd |", "| --- | --- | --- | --- |"]
    for arm in outcome.arms:
        kind = f" (baseline {arm.baseline})" if arm.baseline else ""
        lines.append(f"| {arm.label}{kind} | {arm.scored} | {arm.mean:.2f} | {arm.sd:.2f} |")
    return [*lines, "", *confirm_verdict(outcome)]


def confirm_verdict(outcome: ConfirmOutcome) -> list[str]:
    """The winner, the arms too few seeds scored, and the paired gain of the best searched
    arm over the best baseline with its 95 % interval (or why there is none)."""
    metric, lines = outcome.metric, []
    short = [a for a in outcome.arms if not a.ranked]
    if short:
        listed = ", ".join(f"{a.label} ({a.scored})" for a in short)
        lines.append(
            f"Not ranked, fewer than {MIN_SEEDS} seeds scored (a confirm run failed or "
            f"logged no {metric}): {listed}."
        )
    if outcome.winner is not None:
        what = "a baseline" if outcome.winner.baseline else "a searched configuration"
        lines.append(
            f"**Winner by confirmed mean: {outcome.winner.label}** ({what}), "
            f"{outcome.winner.mean:.2f}; `best_config.yaml` is its configuration."
        )
    else:
        lines.append(
            f"No arm was scored at {MIN_SEEDS} seeds or more: no winner; "
            "`best_config.yaml` is the search's best."
        )
    searched, baseline = outcome.searched, outcome.baseline
    if outcome.gain is not None and searched and baseline:
        mean, low, high = outcome.gain
        verdict = (
            "above 0: the gain holds at these seeds"
            if low > 0
            else "below 0: the baseline is better"
            if high < 0
            else "it includes 0: no gain shown"
        )
        lines.append(
            f"Paired gain of {searched.label} over the best baseline "
            f"{baseline.label}: **{mean:+.2f}** {metric}, 95 % interval "
            f"[{low:+.2f}, {high:+.2f}] over {outcome.pairs} seeds (t-interval of the "
            f"per-seed differences; {verdict})."
        )
    elif searched and baseline:
        lines.append(
            f"{searched.label} and {baseline.label} share {outcome.pairs} scored seed(s): "
            "no interval (it needs 2)."
        )
    elif baseline is None and any(a.baseline for a in outcome.arms):
        lines.append("No baseline was ranked: no gain to report.")
    elif baseline is None:
        lines.append("No baseline was confirmed (search.baselines): no gain to report.")
    else:
        lines.append("No searched configuration was ranked: no gain to report.")
    return lines
