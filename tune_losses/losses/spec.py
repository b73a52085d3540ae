"""The loss section's schema: ``{head: {term_key: {weight, term?, class_weights?, **options}}}``.

:func:`validate_loss` checks a raw loss mapping once (the config layer calls it for the YAML
``loss`` section, :class:`~tune_losses.losses.mix.LossMix` for a raw mapping) and returns
:class:`TermSpec` models that the rest trusts. The weight is checked by
:mod:`tune_losses.schedules`, the options by the term's own signature
(:func:`~tune_losses.losses.registry.validate_options`). Errors are one line naming the field,
``loss.decode.focal.gamma: Input should be greater than or equal to 0``.

Example:
    >>> spec = validate_loss({"decode": {"focal": {"weight": 0.5, "gamma": 1}}})
    >>> spec["decode"]["focal"].model_dump()
    {'weight': 0.5, 'gamma': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from tune_losses.names import key_problem
from tune_losses.schedules import WEIGHT_TAGS, Weight, build_schedule

from .class_weights import WeightMethod
from .registry import LossFn, get_loss, one_line, options_model, validate_options

_CLASS_WEIGHT_TARGETS = ("weight", "alpha")  # the options that class weights fill, in order


class TermSpec(BaseModel):
    """One validated term of a head: weight (number or schedule), term, class weights, options.

    Dumps (``model_dump``) to the mapping it was validated from, normalised: ``weight`` always,
    ``term`` and ``class_weights`` only when given, then the options given, in the term's
    signature order. It also reads like that mapping (``spec["gamma"]``, ``{**spec}``), so code
    written against the plain-dict loss section keeps working.
    """

    model_config = ConfigDict(extra="forbid")

    weight: Weight = 1.0
    term: str | None = None
    class_weights: WeightMethod | list[float] | None = None
    options: dict[str, Any] = {}

    @field_validator("class_weights")
    @classmethod
    def _weights_that_count(cls, v: str | list[float] | None) -> str | list[float] | None:
        if isinstance(v, list):
            if not all(math.isfinite(w) and w >= 0 for w in v):
                raise ValueError(f"class weights must be finite and >= 0, got {v}")
            if not any(v):
                raise ValueError(f"class weights are all 0, so no pixel would count: {v}")
        return v

    def name(self, key: str) -> str:
        """The registry name or dotted path of the term stored under ``key``."""
        return self.term or key

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        flat = {"weight": data["weight"]}
        flat.update({k: data[k] for k in ("term", "class_weights") if data[k] is not None})
        flat.update(data["options"])
        return flat

    def keys(self) -> Iterator[str]:
        return iter(self.model_dump())

    def __getitem__(self, key: str) -> Any:
        return self.model_dump()[key]


LossSpec = dict[str, dict[str, TermSpec] | str]
"""``{head: {term_key: TermSpec}}``, plus ``weighting`` when the YAML names one."""
_HEAD_FIELDS = ("weight", "term", "class_weights")

WEIGHTING_KEY = "weighting"
"""The one key of the loss section that is not a head: how the weighted terms combine."""
WEIGHTINGS = ("fixed", "uncertainty")
"""``fixed``: the sum of weight x term. ``uncertainty``: each weighted term is also scaled by a
learned ``exp(-s)`` plus ``s / 2`` (Kendall et al. 2018), ``s`` one log-variance per term."""


def loss_heads(spec: LossSpec) -> dict[str, dict[str, TermSpec]]:
    """The heads of a validated loss section and their terms (``weighting`` left out)."""
    return {head: terms for head, terms in spec.items() if head != WEIGHTING_KEY}  # type: ignore[misc]


def settles_at(spec: LossSpec) -> float:
    """The progress by which every weight of a validated loss section is on its last regime
    (the latest :meth:`~tune_losses.schedules.Schedule.settles_at` of its terms)."""
    points = [
        build_schedule(term.weight).settles_at()
        for terms in loss_heads(spec).values()
        for term in terms.values()
    ]
    return max(points, default=0.0)


def loss_weighting(spec: Mapping[str, Any]) -> str:
    """How the terms of a validated loss section combine: ``fixed`` unless it says otherwise."""
    return str(spec.get(WEIGHTING_KEY, "fixed"))


def class_weight_target(fn: LossFn) -> str | None:
    """The option of ``fn`` that ``class_weights`` fills (``weight``, else ``alpha``), if any."""
    fields = options_model(fn).model_fields
    return next((t for t in _CLASS_WEIGHT_TARGETS if t in fields), None)


def validate_term(key: str, raw: Any) -> TermSpec:
    """Check one ``{weight, term?, class_weights?, **options}`` mapping stored under ``key``.

    Raises pydantic's ``ValidationError`` for a field, ``ValueError`` for the rest.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping of term options, got {raw!r}")
    spec = TermSpec.model_validate({k: v for k, v in raw.items() if k in _HEAD_FIELDS})
    name = spec.name(key)
    fn = get_loss(name)
    options = validate_options(fn, {k: v for k, v in raw.items() if k not in _HEAD_FIELDS})
    if spec.class_weights is not None:
        target = class_weight_target(fn)
        if target is None:
            raise ValueError(f"term {name!r} takes no class weights")
        if target in options:
            raise ValueError(f"give class_weights or {target}, not both")
    return spec.model_copy(update={"options": options})


def validate_loss(raw: Any) -> LossSpec:
    """Check a whole loss mapping; a term that is ``None`` is switched off, a TermSpec kept.

    Raises ``ValueError`` with one line naming the field (``loss.<head>.<term>.<field>: ...``).
    The key ``weighting`` is not a head but one of :data:`WEIGHTINGS`.
    A head or term key must be able to name MLflow params and metrics; a head whose every
    weight is 0 all through training would not learn, so it is an error (a head with no
    term is simply off).
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("loss must map head names to terms, e.g. {decode: {ce: {weight: 1}}}")
    out: LossSpec = {}
    for head, terms in raw.items():
        if head == WEIGHTING_KEY:
            if terms not in WEIGHTINGS:
                raise ValueError(
                    f"loss.{WEIGHTING_KEY}: expected one of {', '.join(WEIGHTINGS)}, got {terms!r}"
                )
            out[WEIGHTING_KEY] = terms
            continue
        problem = key_problem(str(head))
        if problem is not None:
            raise ValueError(f"loss.{head}: {problem}")
        if not isinstance(terms, Mapping):
            raise ValueError(f"loss.{head}: expected a mapping of terms, got {terms!r}")
        head_terms: dict[str, TermSpec] = {}
        out[str(head)] = head_terms
        for key, spec in terms.items():
            problem = key_problem(str(key))
            if problem is not None:
                raise ValueError(f"loss.{head}.{key}: {problem}")
            if spec is None:  # a term switched off (e.g. the "none" choice of a search)
                continue
            try:
                checked = spec if isinstance(spec, TermSpec) else validate_term(str(key), spec)
            except ValidationError as exc:
                raise ValueError(one_line(exc, WEIGHT_TAGS, f"loss.{head}.{key}")) from None
            except ValueError as exc:
                raise ValueError(f"loss.{head}.{key}: {exc}") from None
            head_terms[str(key)] = checked
        _check_some_weight(str(head), head_terms)
    return out


def _check_some_weight(head: str, terms: Mapping[str, TermSpec]) -> None:
    """Refuse a head whose terms all weigh 0 all through training (nothing would train it)."""
    if terms and all(build_schedule(t.weight).always_zero() for t in terms.values()):
        raise ValueError(
            f"loss.{head}: every term's weight is 0, so nothing trains this head; "
            "give one a weight > 0, or switch its terms off (null)"
        )
