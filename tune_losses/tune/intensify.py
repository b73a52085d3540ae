"""Between Ray and the Optuna searcher: contenders repeated at more seeds, no duplicate
retrained, no more random start-up trials than asked.

:class:`Intensifier` wraps :class:`~tune_losses.tune.searcher.TellingOptunaSearch` the way
Ray's ``ConcurrencyLimiter`` does (a ``searcher`` attribute; Ray saves its state beside the
Optuna searcher's), and owns the search's budget: ``search.num_samples`` configurations,
then ``Searcher.FINISHED`` (Ray is given an unbounded ``num_samples``).

- Repeats (SMAC's intensification, Hutter et al. 2011): a configuration whose first run
  ends COMPLETE with a value better than the incumbent's is trained again at the training
  seeds ``seed + 1 ... seed + repeats - 1`` (never pruned) before Optuna is told, and then
  it is told the seed mean; the incumbent is the best seed mean. Optuna learns from means
  at the top and single draws below it, where a lucky draw cannot take the lead.
- Duplicates: a proposal whose concrete experiment (after the space's own resolution)
  was already trained at the same seed is not trained again; Optuna is told the stored
  outcome at once (its epochs, COMPLETE or PRUNED), the trial tagged ``duplicate_of``.
- Baselines (``search.baselines``): handed out first, each at the training seed (and, with
  repeats, at the repeat seeds too, so that a baseline is a seed mean like a contender),
  their config marked ``baseline``; never told to Optuna, never judged by the scheduler.
- Start-up: with TPE, once ``n_startup_trials`` configurations are out, no further one is
  asked until they have all ended (TPE counts finished trials only, so parallel trials
  would otherwise draw more random configurations than asked).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from ray.tune.search import Searcher

from tune_losses.tune.trainable import EXPERIMENT_KEY, trial_values

BASELINE_KEY = "baseline"  # in a baseline's config: its name in search.baselines
REPEAT_KEY = "repeat_of"  # in a repeat's config: the trial id of the configuration's first run
DUPLICATE_ATTR = "duplicate_of"  # Optuna user attr of a proposal answered from a stored run
DONE_FILE = "search_done.json"  # in the run folder once the searcher has handed out its budget
MAX_DUPLICATES = 20  # proposals in a row that are all duplicates: the sampler has no new point


def config_key(config: dict[str, Any]) -> str:
    """The identity of a trained configuration: its concrete experiment (seed included)."""
    return json.dumps(trial_values(config)[EXPERIMENT_KEY], sort_keys=True, default=str)


class Intensifier(Searcher):
    """Repeats, duplicates and the start-up gate around an Optuna searcher (module docstring)."""

    def __init__(
        self,
        searcher: Any,
        *,
        configs: int,
        repeats: int = 1,
        startup: int = 0,
        run_dir: str | None = None,
        baselines: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.configs, self.repeats, self.startup, self.run_dir = configs, repeats, startup, run_dir
        self._first: dict[str, str] = {}  # config key -> trial id of its first run
        self._inner: dict[str, str] = {}  # trial id of a first run -> id the searcher knows
        self._config: dict[str, dict[str, Any]] = {}  # first run's trial id -> its config
        self._results: dict[str, list[dict[str, Any]]] = {}  # first run -> reported results
        self._outcome: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # key -> told
        self._waiting: dict[str, list[str]] = {}  # key -> duplicates' ids, until it is told
        self._repeat_of: dict[str, str] = {}  # repeat's trial id -> first run's trial id
        self._pending: list[tuple[str, int]] = []  # (first run, seed) repeats to start
        self._held: dict[str, tuple[dict[str, Any], list[float]]] = {}  # first run -> values
        self._live: set[str] = set()  # first runs not ended yet
        self._ended = 0  # first runs that ended
        self._duplicates = 0
        self._incumbent: float | None = None
        self._exhausted = False
        # baselines to start: (name, its experiment, seed), first runs before their repeats
        self._baselines: list[tuple[str, dict[str, Any], int]] = []
        for k in range(repeats):
            for name, exp in (baselines or {}).items():
                self._baselines.append((name, exp, int(exp["train"]["seed"]) + k))
        self._base_first: dict[str, str] = {}  # baseline name -> trial id of its first run

    # ------------------------------------------------------------------ Ray's Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict) -> bool:
        return self.searcher.set_search_properties(metric, mode, config)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._baselines:
            return self._baseline(trial_id)
        if self._pending:
            first, seed = self._pending.pop(0)
            config = copy.deepcopy(self._config[first])
            trial_values(config)[EXPERIMENT_KEY]["train"]["seed"] = seed
            config[REPEAT_KEY] = first
            self._repeat_of[trial_id] = first
            return config
        if len(self._first) >= self.configs or self._exhausted:
            return self._finish()
        if self.startup and len(self._first) >= self.startup and self._ended < self.startup:
            return None  # the start-up trials first: TPE then draws from what they found
        for attempt in range(MAX_DUPLICATES):
            inner = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            config = self.searcher.suggest(inner)
            if config is None or config == Searcher.FINISHED:
                if config == Searcher.FINISHED:
                    self._exhausted = True
                    return self._finish()
                return None
            key = config_key(config)
            if key not in self._first:
                self._first[key] = trial_id
                self._inner[trial_id] = inner
                self._config[trial_id] = config
                self._results[trial_id] = []
                self._live.add(trial_id)
                return config
            self._duplicates += 1
            self._mark_duplicate(inner, self._first[key])
            if key in self._outcome:
                self._tell_copy(inner, key)
            else:  # its first run is still going: told when that one is
                self._waiting.setdefault(key, []).append(inner)
        self._exhausted = True
        return self._finish()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._inner:
            self._results[trial_id].append(dict(result))
            self.searcher.on_trial_result(self._inner[trial_id], result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._repeat_of:
            first = self._repeat_of.pop(trial_id)
            final, values = self._held[first]
            values.append(self._value(result, error))
            if len(values) >= self.repeats:
                self._resolve(first)
            return
        if trial_id not in self._inner:
            return
        self._live.discard(trial_id)
        self._ended += 1
        value = self._value(result, error)
        if self.repeats > 1 and result and not error and self._contender(result, value):
            self._held[trial_id] = (dict(result), [value])
            seed = int(trial_values(self._config[trial_id])[EXPERIMENT_KEY]["train"]["seed"])
            self._pending += [(trial_id, seed + k) for k in range(1, self.repeats)]
            return
        self._tell(trial_id, result, error)

    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def finished_at(self, trial_id: str) -> int | None:
        """Where a first run's Optuna trial ended (see ``TellingOptunaSearch.finished_at``);
        None for a repeat, which Optuna never hears of, and for a trial still going."""
        inner = self._inner.get(trial_id)
        return None if inner is None else self.searcher.finished_at(inner)

    # ------------------------------------------------------------------ what it learned
    @property
    def duplicates(self) -> int:
        """Proposals answered from a stored run instead of training."""
        return self._duplicates

    def seed_values(self, trial_id: str) -> list[float]:
        """The final values per seed of a first run's configuration (its own first)."""
        return list(self._held.get(trial_id, ({}, []))[1])

    # ------------------------------------------------------------------ internals
    def _baseline(self, trial_id: str) -> dict[str, Any]:
        """The next baseline run's config: its experiment at its seed, marked as a baseline
        (and, at a repeat seed, as a repeat of the baseline's first run)."""
        name, exp, seed = self._baselines.pop(0)
        experiment = copy.deepcopy(exp)
        experiment["train"]["seed"] = seed
        config: dict[str, Any] = {EXPERIMENT_KEY: experiment, BASELINE_KEY: name}
        if name in self._base_first:
            config[REPEAT_KEY] = self._base_first[name]
        else:
            self._base_first[name] = trial_id
        return config

    def _value(self, result: dict[str, Any] | None, error: bool) -> float:
        """The searcher's metric in ``result`` (NaN for an error, a missing value, or a
        Pareto search's list of metrics, which has no single value to repeat for)."""
        if isinstance(self.searcher.metric, list):
            return math.nan
        value = (result or {}).get(self.searcher.metric)
        return float(value) if value is not None and not error else math.nan

    def _contender(self, result: dict[str, Any], value: float) -> bool:
        """Whether a first run that ended COMPLETE would be the best so far."""
        from tune_losses.tune.searcher import trial_state

        if trial_state(result, False) != "COMPLETE" or not math.isfinite(value):
            return False
        if self._incumbent is None:
            return True
        return value > self._incumbent if self.searcher.mode == "max" else value < self._incumbent

    def _resolve(self, first: str) -> None:
        """Every seed of a contender has ended: tell Optuna the mean; maybe a new incumbent."""
        final, values = self._held[first]
        finite = [v for v in values if math.isfinite(v)]
        mean = sum(finite) / len(finite)
        told = {**final, self.searcher.metric: mean}
        better = max if self.searcher.mode == "max" else min
        self._incumbent = mean if self._incumbent is None else better(self._incumbent, mean)
        self._tell(first, told, False)

    def _tell(self, first: str, result: dict[str, Any] | None, error: bool) -> None:
        key = next(k for k, t in self._first.items() if t == first)
        self._outcome[key] = (result, error)
        self.searcher.on_trial_complete(self._inner[first], result, error)
        for inner in self._waiting.pop(key, []):
            self._tell_copy(inner, key)

    def _tell_copy(self, inner: str, key: str) -> None:
        """Tell a duplicate proposal what its configuration's first run was told."""
        first = self._first[key]
        result, error = self._outcome[key]
        for reported in self._results[first]:
            self.searcher.on_trial_result(inner, reported)
        self.searcher.on_trial_complete(inner, result, error)

    def _mark_duplicate(self, inner: str, first: str) -> None:
        ot_trial = getattr(self.searcher, "_ot_trials", {}).get(inner)
        if ot_trial is not None:
            ot_trial.set_user_attr(DUPLICATE_ATTR, first)

    def _finish(self) -> str | None:
        """FINISHED once nothing can start any more: no first run that may still turn out a
        contender, no repeat pending or running; until then, wait."""
        if self._live or self._pending or self._held.keys() - self._told_firsts():
            return None
        if self.run_dir is not None:
            from tune_losses.tune.state import write_text

            summary = {"configurations": len(self._first), "duplicates": self._duplicates}
            write_text(self.run_dir, DONE_FILE, json.dumps(summary))
        return Searcher.FINISHED

    def _told_firsts(self) -> set[str]:
        return {self._first[k] for k in self._outcome}
