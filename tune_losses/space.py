"""Search markers in a YAML tree -> an Optuna define-by-run function and concrete trial configs.

A marker is a one-key mapping standing where a value stands:
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{int: [lo, hi]}``,
``{choice: [a, b, ...]}`` or ``{choice: {label: a, ...}}`` (options may be whole
sub-trees; only the chosen one's markers are sampled), ``{grid: [a, b, ...]}``.

Parameter names are config paths (``loss.decode.dice.weight``). A choice at path ``P``
is the categorical ``P.choice``; a marker inside its option ``label`` is named from
``P.<label>``: ``P.<label>`` when the option is itself a marker, ``P.<label>.<key>``
inside a mapping option. Two options therefore never share an Optuna parameter, even
when they hold the same sub-path with different distributions.
A space whose markers are all ``grid`` is searched exhaustively (Optuna's GridSampler);
mixed with random markers, ``grid`` behaves like ``choice``.

Example:
    >>> import optuna
    >>> sp = SearchSpace({"loss": {"decode": {"ce": {"weight": {"uniform": [0.1, 1.0]}}}}})
    >>> study = optuna.create_study()
    >>> cfg = sp.sample(study.ask())
    >>> 0.1 <= cfg["loss"]["decode"]["ce"]["weight"] <= 1.0
    True
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from tune_losses.config import ConfigError, Experiment, validate_experiment
from tune_losses.markers import (
    FLOAT_MARKERS,
    bounds_of,
    categorical_name,
    marker_of,
    options_of,
    resolve,
    walk_markers,
)

_FRACTIONAL = "Input should be a valid integer, got a number with a fractional part"


class SuggestTrial(Protocol):
    """The part of ``optuna.Trial`` (or Ray's captor of it) that sampling needs."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


class SearchSpace:
    """A search-space tree: validates it, samples it through Optuna, and resolves trials."""

    def __init__(self, raw: Mapping[str, Any], source: str = "") -> None:
        self.raw = copy.deepcopy(dict(raw))
        self.source = source
        try:
            self._check()
        except ConfigError as exc:
            if source and not str(exc).startswith(f"{source}: "):
                raise ConfigError(f"{source}: {exc}") from None
            raise

    def _check(self) -> None:
        self.markers = list(walk_markers(self.raw))
        for name, _ in self.markers:
            if name.split(".")[:2] in (["search", "baselines"], ["search", "confirm"]):
                what = ".".join(name.split(".")[:3])
                raise ConfigError(f"{what}: no search markers here ({name}); it is fixed")
        for name, node in self.markers:
            if marker_of(node) in ("uniform", "loguniform", "int"):
                bounds_of(name, node)
        self.grid_only = bool(self.markers) and all(marker_of(n) == "grid" for _, n in self.markers)
        if self.grid_only and any(marker_of(o) for _, n in self.markers for o in _opts_of(n)):
            raise ConfigError("grid options may not hold further markers")
        self._check_every_option()
        self._baselines = self._validate_baselines()

    def _check_every_option(self) -> None:
        """Validate the tree once per choice option (others at their first), and with every
        numeric marker at its low and at its high bound, so a bad value in any branch is
        reported at load time rather than in the trial that draws it."""
        firsts = {name: self._first(name, node) for name, node in self.markers}
        highs = {name: self._first(name, node, high=True) for name, node in self.markers}
        variants: list[dict[str, Any]] = [firsts, highs]
        for name, node in self.markers:
            if marker_of(node) in ("choice", "grid"):
                for label in options_of(name, node):
                    variants.append({**firsts, name: label})
        self._check_some_term()
        self.variants = [self.validate(self._concrete(chosen)) for chosen in variants]
        self._check_integer_fields(variants[2:])

    def _concrete(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """The tree with each marker at ``chosen[name]`` where given, else its first value."""
        return resolve(self.raw, "", lambda n, node: _pick(chosen, n, node))

    def _check_integer_fields(self, options: list[dict[str, Any]]) -> None:
        """Validate every branch once more with each uniform/loguniform marker at a fractional
        inner point: on a field that takes integers (``train.epochs``) the error says to use
        ``int`` rather than failing the trials that draw a fraction."""
        inner = {
            name: _fractional(*bounds_of(name, node))
            for name, node in self.markers
            if marker_of(node) in FLOAT_MARKERS
        }
        if not inner:
            return
        for chosen in [{}, *options]:
            try:
                self.validate(self._concrete({**chosen, **inner}))
            except ConfigError as exc:
                if _FRACTIONAL not in str(exc):
                    raise
                hint = "takes an integer but a uniform marker draws fractions; use {int: [lo, hi]}"
                raise ConfigError(str(exc).replace(_FRACTIONAL, hint)) from None

    def _check_some_term(self) -> None:
        """Refuse a space whose choices can switch every loss term off (a head with no term
        is simply off; a loss with none cannot train). Terms add up over the independent
        options, so picking each choice's sparsest option, inner choices first, finds the
        fewest terms any trial can have."""
        chosen: dict[str, Any] = {}
        for name, node in reversed(self.markers):
            if name.startswith("loss") and marker_of(node) in ("choice", "grid"):
                chosen[name] = min(
                    options_of(name, node),
                    key=lambda label, n=name: _count_terms(self._concrete({**chosen, n: label})),
                )
        picked: list[str] = []

        def record(name: str, node: Mapping[str, Any]) -> Any:
            value = _pick(chosen, name, node)
            if marker_of(node) in ("choice", "grid") and name.startswith("loss"):
                picked.append(f"{name}: {value}")
            return value

        if chosen and _count_terms(resolve(self.raw, "", record)) == 0:
            raise ConfigError(
                f"loss: choosing {', '.join(picked)} switches every term off; "
                "a trial needs at least one term (a head with no term is simply off)"
            )

    @staticmethod
    def _first(name: str, node: Mapping[str, Any], *, high: bool = False) -> Any:
        """A marker's first option, or its low (``high``: its high) bound."""
        kind = marker_of(node)
        if kind in ("choice", "grid"):
            return next(iter(options_of(name, node)))
        value = bounds_of(name, node)[1 if high else 0]
        return int(value) if kind == "int" else value

    def validate(self, concrete: Mapping[str, Any]) -> Experiment:
        """Validate one concrete tree; a ConfigError names the source file and the field."""
        return validate_experiment(concrete, self.source)

    @property
    def experiment(self) -> Experiment:
        """The search settings and defaults (markers at their first option)."""
        return self.variants[0]

    def sample(self, trial: SuggestTrial) -> dict[str, Any]:
        """Sample every reachable marker through ``trial`` and return the concrete tree."""

        def pick(name: str, node: Mapping[str, Any]) -> Any:
            kind = marker_of(node)
            if kind in ("choice", "grid"):
                labels = list(options_of(name, node))
                return trial.suggest_categorical(categorical_name(name, node), labels)
            lo, hi = bounds_of(name, node)
            if kind == "int":
                return trial.suggest_int(name, int(lo), int(hi))
            return trial.suggest_float(name, float(lo), float(hi), log=kind == "loguniform")

        return resolve(self.raw, "", pick)

    def resolve(self, params: Mapping[str, Any]) -> Experiment:
        """The validated experiment for sampled ``params`` (Optuna names, as in
        ``trial.params``): how a trial's config is rebuilt after PBT changed a value."""

        def pick(name: str, node: Mapping[str, Any]) -> Any:
            kind = marker_of(node)
            if kind in ("choice", "grid"):
                return params[categorical_name(name, node)]
            return params[name]

        return self.validate(resolve(self.raw, "", pick))

    def baselines(self) -> dict[str, Experiment]:
        """Each ``search.baselines`` entry's experiment: the space with its loss replaced by
        the baseline's, markers outside ``loss`` at their first value (option or low bound);
        validated once, with the space."""
        return dict(self._baselines)

    def _validate_baselines(self) -> dict[str, Experiment]:
        out = {}
        for name, loss in (self.raw.get("search", {}).get("baselines") or {}).items():
            concrete = self._concrete({})
            concrete["loss"] = copy.deepcopy(loss)
            try:
                out[str(name)] = validate_experiment(concrete)
            except ConfigError as exc:
                raise ConfigError(f"search.baselines.{name}: {exc}") from None
        return out

    def numeric_markers(self) -> dict[str, tuple[str, float, float]]:
        """``{name: (kind, low, high)}`` of every uniform, loguniform and int marker."""
        return {
            name: (marker_of(node), *bounds_of(name, node))
            for name, node in self.markers
            if marker_of(node) in ("uniform", "loguniform", "int")
        }

    def define_by_run(self) -> Callable[[SuggestTrial], dict[str, Any]]:
        """The function ``OptunaSearch(space=...)`` calls: samples, returns the concrete tree."""
        return DefineByRun(self)

    def grid(self) -> dict[str, list[Any]]:
        """Optuna GridSampler's search space (only for a grid-only space)."""
        return {categorical_name(n, node): list(options_of(n, node)) for n, node in self.markers}

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can train (``train.epochs`` may itself be searched)."""
        return max(v.train.epochs for v in self.variants)

    @property
    def exhaustive(self) -> bool:
        """Whether a search runs every grid point once: a grid-only space and no
        ``search.sampler`` asked for (with one, grid markers are sampled as choices)."""
        return self.grid_only and self.experiment.search.sampler is None

    @property
    def num_trials(self) -> int:
        """Trials a search of this space runs: the grid's points when it is
        :attr:`exhaustive`, else ``search.num_samples``."""
        return self.grid_size() if self.exhaustive else self.experiment.search.num_samples

    def grid_size(self) -> int:
        """Number of points of a grid-only space (0 for any other space)."""
        return math.prod(len(v) for v in self.grid().values()) if self.grid_only else 0

    def grid_points(self) -> Iterator[dict[str, Any]]:
        """Every concrete tree of a grid-only space."""
        names = [n for n, _ in self.markers]
        labels = [list(options_of(n, node)) for n, node in self.markers]
        for combo in itertools.product(*labels):
            chosen = dict(zip(names, combo, strict=True))
            yield resolve(self.raw, "", lambda n, _node, c=chosen: c[n])


class DefineByRun:
    """A picklable define-by-run function (Ray checkpoints the searcher with it)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: SuggestTrial) -> dict[str, Any]:
        exp = self.space.validate(self.space.sample(trial))
        return {"experiment": exp.model_dump(mode="json")}


def _pick(chosen: Mapping[str, Any], name: str, node: Mapping[str, Any]) -> Any:
    """``chosen[name]`` where it fits this marker, else the marker's first value."""
    value = chosen.get(name)
    kind = marker_of(node)
    if kind in ("choice", "grid"):
        return value if value in options_of(name, node) else SearchSpace._first(name, node)
    return SearchSpace._first(name, node) if value is None else value


def _fractional(lo: float, hi: float) -> float:
    """A point inside ``[lo, hi]`` that is no integer (``hi - lo`` times an irrational)."""
    return lo + (hi - lo) * (math.sqrt(5.0) - 1.0) / 2.0


def _count_terms(concrete: Mapping[str, Any]) -> int:
    """How many loss terms a concrete tree switches on (a term that is None is off)."""
    loss = concrete.get("loss", {"decode": {"ce": {}}})  # the config's default: one term
    if not isinstance(loss, Mapping):
        return 1  # not a loss mapping: validation names the problem
    heads = [h for h in loss.values() if isinstance(h, Mapping)]
    return sum(spec is not None for head in heads for spec in head.values())


def _opts_of(node: Mapping[str, Any]) -> list[Any]:
    raw = next(iter(node.values()))
    return list(raw.values()) if isinstance(raw, Mapping) else list(raw)
