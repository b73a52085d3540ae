"""Parameter importances (fANOVA) of the sampled ``loss.*`` params at one epoch budget.

How they are computed: an Optuna study is rebuilt in memory from the FINISHED
children that have a ``best_val_mIoU``. MLflow keeps params as strings, so a param whose
values all parse as finite numbers gets ``FloatDistribution(min, max)`` over the observed
values and any other gets ``CategoricalDistribution`` of the observed strings. Only params
present in every one of those trials are used at the top level (a conditional param, e.g.
the weight of a term that only exists in one branch of a ``choice``, is left out there; its
branch's ``.choice`` param carries the effect), and each option of a ``choice`` gets its own
importances over the trials where it was chosen, of the params inside it. Params with a
single observed value carry no signal and are left out; params whose values equal
another's in every trial (a ``choice`` label and the value it resolves to) are aliases and
only the shortest name is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tune_losses.tracking import CHOICE_SUFFIXES, CURVE_METRIC, REPEAT_TAG, TrialRecord

MIN_TRIALS = 3


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
    options: dict[str, Importances] = field(default_factory=dict)
    basis: str = "the epochs every trial ran"

    @property
    def objective(self) -> str:
        """What the importances explain: the best val mIoU within the same epoch budget."""
        where = f" up to epoch {self.budget}" if self.budget else ""
        return f"best {CURVE_METRIC}{where} ({self.basis})"

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
            "options": {k: v.to_json() for k, v in self.options.items()},
        }


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
    return budget, at_epoch(with_curve, budget)


def at_epoch(trials: Sequence[TrialRecord], epoch: int) -> dict[str, float]:
    """Each trial that reached ``epoch``: its best ``val/mIoU`` up to it (a rung's view)."""
    values = {}
    for t in trials:
        if t.history and t.history[-1][0] >= epoch:
            seen = [v for step, v in t.history if step <= epoch and math.isfinite(v)]
            if seen:
                values[t.run_id] = max(seen)
    return values


def param_importances(
    trials: Sequence[TrialRecord], seed: int = 0, budget: int | None = None
) -> Importances:
    """fANOVA importances of the ``loss.*`` params for the best ``val/mIoU`` at ``budget``
    epochs (the trials that reached it), or at equal budget (:func:`equal_budget`) when
    none is given; ``options`` holds, per option of each ``choice``, the importances of the
    params inside that option over the trials where it was chosen.

    Rebuilds an in-memory Optuna study from the FINISHED trials (a repeat at another seed
    is left out: its configuration counts once; see the module docstring for the
    distributions and which params are used) and calls
    ``optuna.importance.get_param_importances`` with a seeded
    ``FanovaImportanceEvaluator`` (Hutter, Hoos, Leyton-Brown 2014, "An Efficient
    Approach for Assessing Hyperparameter Importance"). Never raises for too little
    data: ``message`` says why ``values`` is empty.
    """
    finished = [t for t in trials if t.status == "FINISHED" and not t.tags.get(REPEAT_TAG)]
    basis = "the epochs every trial ran"
    if budget is None:
        budget, at_budget = equal_budget(finished)
    else:
        at_budget, basis = at_epoch(finished, budget), "the rung the search trusts"
    done = [t for t in finished if t.run_id in at_budget]
    result = _importances(done, at_budget, seed, budget)
    result.basis = basis
    for choice in sorted({k for t in done for k in t.params if k.endswith(CHOICE_SUFFIXES)}):
        prefix = choice.rsplit(".", 1)[0]
        for label in sorted({t.params[choice] for t in done if choice in t.params}):
            inside = f"{prefix}.{label}"
            chosen = [t for t in done if t.params.get(choice) == label]
            keys = {
                k for t in chosen for k in t.params if k == inside or k.startswith(inside + ".")
            }
            if keys:
                result.options[f"{choice}={label}"] = _importances(
                    chosen, at_budget, seed, budget, only=sorted(keys)
                )
    return result


def _importances(
    done: Sequence[TrialRecord],
    at_budget: dict[str, float],
    seed: int,
    budget: int | None,
    only: Sequence[str] | None = None,
) -> Importances:
    """fANOVA over ``done`` (their values in ``at_budget``), of the params they all have
    (among ``only`` when given)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    evaluator_name = "FanovaImportanceEvaluator"
    result = Importances({}, len(done), [], {}, {}, evaluator_name, budget=budget or None)
    if len(done) < MIN_TRIALS:
        result.message = (
            f"importances need >= {MIN_TRIALS} finished trials with a {CURVE_METRIC} "
            f"history (have {len(done)})"
        )
        return result
    all_keys = list(only) if only is not None else sorted({k for t in done for k in t.params})
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
