"""How far a search can trust what it ranked: each rung's rank line and the seed-noise ceiling.

A rung's rank line is Spearman's correlation, over the configurations that ran the full
budget, between their best ``val/mIoU`` up to the rung's epoch and their final best: how
well cutting there would have ranked them. The seed-noise ceiling is the same correlation
between two training seeds of the full budget, over the configurations the search repeated
(``search.repeats``): no rung can be expected to rank better than a second seed does. The
trusted rung is the lowest one whose line reaches the ceiling (:data:`FALLBACK_CEILING`
stands in without repeats); importances are computed there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tune_losses.tracking import TrialRecord

MIN_CONFIGS = 3
FALLBACK_CEILING = 0.7
FULL_BUDGET = ("completed", "early_stopping")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties at their average rank); NaN below 3 pairs or when
    either side is constant."""
    from scipy.stats import spearmanr

    if len(a) < MIN_CONFIGS or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def best_up_to(history: Sequence[tuple[int, float]], epoch: int) -> float:
    """The best finite value of a ``(step, value)`` history up to ``epoch`` (NaN if none)."""
    seen = [v for step, v in history if step <= epoch and math.isfinite(v)]
    return max(seen, default=math.nan)


@dataclass
class Trust:
    """Each rung's rank line against the full budget, the noise ceiling, the trusted rung."""

    lines: dict[int, tuple[float, int]]  # rung epoch -> (Spearman, configurations)
    ceiling: tuple[float, int] | None  # (Spearman of two seeds, configurations), if measured
    trusted: int | None  # the epoch importances use (a rung, or the full budget); None: unknown
    full_budget: int  # epochs of a full run
    seeds: dict[str, list[float]] = field(default_factory=dict)  # config -> final per seed

    def sentence(self) -> str:
        """One line for the story and the terminal, e.g. ``rung 1 ranks like the full budget
        at 0.62 over 9 configurations; two seeds of the full budget agree at 0.55 over 4``."""
        parts = [
            f"rung {epoch} ranks like the full budget at {rho:.2f} over {n} configurations"
            for epoch, (rho, n) in sorted(self.lines.items())
            if math.isfinite(rho)
        ] or ["no rung rank line yet (fewer than 3 configurations ran the full budget)"]
        if self.ceiling is not None and math.isfinite(self.ceiling[0]):
            rho, n = self.ceiling
            parts.append(f"two seeds of the full budget agree at {rho:.2f} over {n}")
        else:
            parts.append(
                f"no seed-noise ceiling (fewer than {MIN_CONFIGS} configurations repeated)"
            )
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "rank_lines": {str(k): {"spearman": r, "n": n} for k, (r, n) in self.lines.items()},
            "noise_ceiling": None
            if self.ceiling is None
            else {"spearman": self.ceiling[0], "n": self.ceiling[1]},
            "trusted_rung": self.trusted,
            "full_budget": self.full_budget,
            "seeds": self.seeds,
            "sentence": self.sentence(),
        }


def seed_groups(trials: Sequence[TrialRecord]) -> dict[str, list[TrialRecord]]:
    """The FINISHED runs of each configuration, its first run first: a repeat (tagged
    ``repeat_of`` with the first run's trial id) joins its original."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in trials:
        if t.status == "FINISHED" and not t.repeat_of:
            groups[t.trial_id or t.run_id] = [t]
    for t in trials:
        if t.status == "FINISHED" and t.repeat_of in groups:
            groups[t.repeat_of].append(t)
    return groups


def own_value(t: TrialRecord) -> float:
    """A run's own final value (``best`` is its configuration's seed mean once folded)."""
    return t.seeds[0] if t.seeds else t.best


def measure_trust(trials: Sequence[TrialRecord], rungs: Sequence[int]) -> Trust:
    """Rank lines of ``rungs`` (epochs) against the full budget over the configurations
    whose first run went the whole way, and the noise ceiling from repeated ones."""
    groups = seed_groups(trials)
    full = [g[0] for g in groups.values() if g[0].stop_reason in FULL_BUDGET and g[0].history]
    budget = max((t.history[-1][0] for t in full), default=0)
    finals = [own_value(t) for t in full]
    lines = {}
    for epoch in sorted(r for r in rungs if 0 < r < budget):
        lines[epoch] = (spearman([best_up_to(t.history, epoch) for t in full], finals), len(full))
    repeated = {k: [own_value(t) for t in g] for k, g in groups.items() if len(g) > 1}
    ceiling = None
    if repeated:
        pairs = list(repeated.values())
        ceiling = (spearman([p[0] for p in pairs], [p[1] for p in pairs]), len(pairs))
    bar = ceiling[0] if ceiling and math.isfinite(ceiling[0]) else FALLBACK_CEILING
    trusted = next(
        (e for e, (rho, _) in sorted(lines.items()) if math.isfinite(rho) and rho >= bar),
        budget if len(full) >= MIN_CONFIGS else None,
    )
    names = {t.trial_id: t.name for t in trials}
    seeds = {names.get(k, k): v for k, v in repeated.items()}
    return Trust(lines, ceiling, trusted, budget, seeds)


def rungs_of(params: Mapping[str, str], max_epochs: int) -> list[int]:
    """ASHA's rung epochs below ``max_epochs`` from the parent's ``search.grace_period`` and
    ``search.reduction_factor`` params (1 and 2 when absent)."""
    grace = int(float(params.get("search.grace_period", 1)))
    factor = int(float(params.get("search.reduction_factor", 2)))
    rungs, epoch = [], max(1, grace)
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= max(2, factor)
    return rungs
