"""Loss-weight schedules: a number, or a function of training progress in [0, 1].

A YAML weight is either a plain number or a mapping with a ``schedule`` key (already
validated by the config layer); :func:`build_schedule` turns either into a
:class:`Schedule`, a callable ``progress -> weight`` with a readable repr for logs.

Example:
    >>> s = build_schedule({"schedule": "linear", "start": 0.5, "end": 0.1})
    >>> s, round(s(0.5), 3)
    (Linear(start=0.5, end=0.1), 0.3)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


class Schedule:
    """Weight as a function of training progress; progress is clamped to [0, 1]."""

    def __call__(self, progress: float) -> float:
        return float(self.at(min(1.0, max(0.0, float(progress)))))

    def at(self, p: float) -> float:
        """Weight at progress ``p`` in [0, 1]."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """The same weight throughout."""

    value: float

    def at(self, p: float) -> float:
        return self.value


@dataclass(frozen=True)
class Linear(Schedule):
    """``start + (end - start) p``."""

    start: float
    end: float

    def at(self, p: float) -> float:
        return self.start + (self.end - self.start) * p


@dataclass(frozen=True)
class Cosine(Schedule):
    """Half-cosine from ``start`` to ``end``: ``end + (start - end)(1 + cos(pi p)) / 2``."""

    start: float
    end: float

    def at(self, p: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class Exp(Schedule):
    """Geometric interpolation ``start (end / start)^p``; both ends > 0."""

    start: float
    end: float

    def at(self, p: float) -> float:
        return self.start * (self.end / self.start) ** p


@dataclass(frozen=True)
class Step(Schedule):
    """``values[i]`` for ``p`` in ``[milestones[i-1], milestones[i])`` (``values[0]`` first)."""

    values: tuple[float, ...]
    milestones: tuple[float, ...]

    def at(self, p: float) -> float:
        return self.values[bisect.bisect_right(self.milestones, p)]


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear ``start -> value`` over the first ``warmup`` fraction of training, then ``value``."""

    value: float
    warmup: float
    start: float = 0.0

    def at(self, p: float) -> float:
        if self.warmup <= 0.0 or p >= self.warmup:
            return self.value
        return self.start + (self.value - self.start) * p / self.warmup


def _step(values: Sequence[float], milestones: Sequence[float]) -> Step:
    if len(values) != len(milestones) + 1:
        raise ValueError(
            f"step schedule needs one more value than milestones: {values}, {milestones}"
        )
    return Step(tuple(float(v) for v in values), tuple(float(m) for m in milestones))


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": Constant,
    "linear": Linear,
    "cosine": Cosine,
    "exp": Exp,
    "step": _step,
    "warmup": Warmup,
}


def build_schedule(spec: float | Mapping) -> Schedule:
    """Schedule from a number (constant) or a mapping ``{schedule: name, **fields}``."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return Constant(float(spec))
    if not isinstance(spec, Mapping) or "schedule" not in spec:
        raise ValueError(f"a weight must be a number or a mapping with 'schedule', got {spec!r}")
    fields = {k: v for k, v in spec.items() if k != "schedule"}
    name = spec["schedule"]
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**fields)
    except TypeError as exc:
        raise ValueError(f"bad fields for schedule {name!r}: {exc}") from exc


def step_values(values: Sequence[float]) -> dict[str, object]:
    """The ``step`` schedule that applies ``values[e]`` during the e-th of ``len(values)``
    equal parts of training (epochs): milestones at ``k / len(values)``, the progress of
    the first step of epoch k, so replaying a per-epoch weight history is exact."""
    n = len(values)
    milestones = [k / n for k in range(1, n)]
    return {"schedule": "step", "values": [float(v) for v in values], "milestones": milestones}
