"""Loss-weight schedules, the one family of them: each rule's fields, its checks and its values.

A weight is a number >= 0 or a schedule mapping ``{schedule: name, **fields}`` (:data:`Weight`);
each schedule is a small frozen pydantic model that validates its fields when it is built and
maps training progress in [0, 1] to a weight. The config layer validates weights with these
models, once; :func:`build_schedule` turns a validated weight (or a raw one, validated here by
the same models) into a :class:`Schedule`.

Example:
    >>> s = build_schedule({"schedule": "linear", "start": 0.5, "end": 0.1})
    >>> s, round(s(0.5), 3)
    (Linear(start=0.5, end=0.1), 0.3)
"""

from __future__ import annotations

import bisect
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class Schedule(BaseModel):
    """Weight as a function of training progress; progress is clamped to [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __call__(self, progress: float) -> float:
        return float(self.at(min(1.0, max(0.0, float(progress)))))

    def at(self, p: float) -> float:
        """Weight at progress ``p`` in [0, 1]."""
        raise NotImplementedError

    def always_zero(self) -> bool:
        """Whether the weight is 0 all through training: every family is monotone between
        its knots (0, 1 and a step's milestones), so the values there decide."""
        return all(self.at(p) == 0.0 for p in self._knots())

    def _knots(self) -> tuple[float, ...]:
        return (0.0, 1.0)

    def settles_at(self) -> float:
        """The progress from which the weight is on its last regime: 0 for a constant and
        for a ramp (its shape runs from the first step), the last milestone where a step
        schedule changes value, the end of a warm-up. A run cut before this point has not
        played the schedule (a late switch-on is plain CE until then)."""
        return 0.0


class Constant(Schedule):
    """The same weight throughout."""

    schedule: Literal["constant"] = Field("constant", repr=False)
    value: NonNegative

    def at(self, p: float) -> float:
        return self.value


class _Ramp(Schedule):
    """A ramp between two weights >= 0 (the fields come before ``schedule`` in a dump)."""

    start: NonNegative
    end: NonNegative


class Linear(_Ramp):
    """``start + (end - start) p``."""

    schedule: Literal["linear"] = Field("linear", repr=False)

    def at(self, p: float) -> float:
        return self.start + (self.end - self.start) * p


class Cosine(_Ramp):
    """Half-cosine from ``start`` to ``end``: ``end + (start - end)(1 + cos(pi p)) / 2``."""

    schedule: Literal["cosine"] = Field("cosine", repr=False)

    def at(self, p: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))


class Exp(Schedule):
    """Geometric interpolation ``start (end / start)^p``; both ends > 0."""

    schedule: Literal["exp"] = Field("exp", repr=False)
    start: float = Field(gt=0.0, allow_inf_nan=False)
    end: float = Field(gt=0.0, allow_inf_nan=False)

    def at(self, p: float) -> float:
        return self.start * (self.end / self.start) ** p


class Step(Schedule):
    """``values[i]`` for ``p`` in ``[milestones[i-1], milestones[i])`` (``values[0]`` first).

    Milestones increase strictly inside (0, 1), and there is one more value than milestones.
    """

    schedule: Literal["step"] = Field("step", repr=False)
    values: list[NonNegative] = Field(min_length=1)
    milestones: list[float] = []

    @model_validator(mode="after")
    def _check(self) -> Step:
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError("step schedule needs len(values) == len(milestones) + 1")
        ms = self.milestones
        increasing = all(a < b for a, b in zip(ms, ms[1:], strict=False))
        if not increasing or any(not 0.0 < m < 1.0 for m in ms):
            raise ValueError("step milestones must increase strictly inside (0, 1)")
        return self

    def at(self, p: float) -> float:
        return self.values[bisect.bisect_right(self.milestones, p)]

    def _knots(self) -> tuple[float, ...]:
        return (0.0, *self.milestones, 1.0)

    def settles_at(self) -> float:
        pairs = zip(self.milestones, self.values[:-1], self.values[1:], strict=True)
        changes = [m for m, before, after in pairs if before != after]
        return changes[-1] if changes else 0.0


class Warmup(Schedule):
    """Linear ``start -> value`` over the first ``warmup`` fraction of training, then ``value``."""

    schedule: Literal["warmup"] = Field("warmup", repr=False)
    value: NonNegative
    warmup: float = Field(gt=0.0, le=1.0)
    start: NonNegative = 0.0

    def at(self, p: float) -> float:
        if p >= self.warmup:
            return self.value
        return self.start + (self.value - self.start) * p / self.warmup

    def settles_at(self) -> float:
        return self.warmup if self.start != self.value else 0.0


AnySchedule = Annotated[
    Constant | Linear | Cosine | Exp | Step | Warmup, Field(discriminator="schedule")
]
SCHEDULES: dict[str, type[Schedule]] = {
    cls.model_fields["schedule"].default: cls
    for cls in typing.get_args(typing.get_args(AnySchedule)[0])
}

# Labels of the two kinds of weight in a validation error's location (``weight.schedule.step``).
WEIGHT_TAGS = ("number", "schedule")


def _weight_kind(value: Any) -> str:
    return "schedule" if isinstance(value, Mapping | BaseModel) else "number"


Weight = Annotated[
    Annotated[NonNegative, Field(strict=True), Tag("number")]
    | Annotated[AnySchedule, Tag("schedule")],
    Discriminator(_weight_kind),
]
"""A loss weight: a finite number >= 0 (not a bool, not a string), or a schedule mapping."""

_WEIGHT = TypeAdapter(Weight)


def build_schedule(weight: float | Schedule | Mapping[str, Any]) -> Schedule:
    """The :class:`Schedule` of a weight: a number is :class:`Constant`, a model passes through.

    A validated weight (a float or a schedule model) is used as it is; anything else (a raw
    mapping from a library caller) is validated by the same models first, so a bad weight
    raises pydantic's ``ValidationError`` (a ``ValueError``).
    """
    if not isinstance(weight, Schedule | float):
        weight = _WEIGHT.validate_python(weight)
    return weight if isinstance(weight, Schedule) else Constant(value=weight)


def played_epoch(settles_at: float, epochs: int) -> int:
    """The first epoch (1-based) trained wholly past progress ``settles_at``, so a run judged
    after it has trained at least one epoch with every weight on its last regime: epoch
    ``e`` covers progress ``[(e - 1) / epochs, e / epochs)``, hence ``ceil(p epochs) + 1``,
    at most ``epochs``; 0 when nothing is left to play (``settles_at`` 0)."""
    if settles_at <= 0.0:
        return 0
    return min(epochs, math.ceil(settles_at * epochs - 1e-9) + 1)


def step_values(values: Sequence[float]) -> dict[str, object]:
    """The ``step`` schedule that applies ``values[e]`` during the e-th of ``len(values)``
    equal parts of training (epochs): milestones at ``k / len(values)``, the progress of
    the first step of epoch k, so replaying a per-epoch weight history is exact."""
    n = len(values)
    milestones = [k / n for k in range(1, n)]
    return {"schedule": "step", "values": [float(v) for v in values], "milestones": milestones}
