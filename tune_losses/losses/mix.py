"""LossMix: a weighted, scheduled sum of loss terms over one or more output heads."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tune_losses.schedules import Schedule, build_schedule

from ._functional import Prepared, float32_region
from .class_weights import WEIGHT_METHODS, class_weights_from_frequencies
from .registry import LossFn, get_loss

_RESERVED = ("weight", "term", "class_weights")


@dataclass
class LossOutput:
    """Result of :meth:`LossMix.forward`.

    Attributes:
        total: 0-dim tensor to back-propagate, the sum of ``parts``.
        parts: weighted value of each term, keys ``"{head}/{term_key}"``.
        weights: effective weight of each term at this progress, same keys.
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class _Term:
    key: str
    head: str
    name: str
    fn: LossFn
    schedule: Schedule
    options: dict[str, Any]
    class_weight_param: str | None = None
    class_weight_source: str | list[float] | None = None


def _keyword_options(fn: LossFn) -> tuple[set[str], bool]:
    """Keyword-only parameter names of ``fn`` and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class LossMix(nn.Module):
    """Weighted sum of loss terms per head, each weight a number or a schedule of progress.

    Terms of one head share one softmax (:class:`~tune_losses.losses._functional.Prepared`);
    a term whose weight is 0 at the current progress is not computed at all.

    Args:
        spec: ``{head: {term_key: {"weight": number | schedule mapping, "term": registry
            name or "pkg.mod:fn" (default: term_key), "class_weights": method name or
            per-class list (for terms with a ``weight`` or ``alpha`` option), **options}}}``.
        ignore_index: label of ignored pixels, passed to every term.
        class_frequencies: per-class pixel counts of the training masks, needed when a
            ``class_weights`` method is named; weights are computed once per method.

    Example:
        >>> import torch
        >>> mix = LossMix({"decode": {"ce": {"weight": 1.0},
        ...                           "dice": {"weight": {"schedule": "linear",
        ...                                               "start": 0.0, "end": 1.0}}}})
        >>> out = mix({"decode": torch.zeros(1, 3, 4, 4)}, torch.zeros(1, 4, 4).long(), 0.0)
        >>> sorted(out.parts), out.weights["decode/dice"]
        (['decode/ce', 'decode/dice'], 0.0)
    """

    def __init__(
        self,
        spec: Mapping[str, Mapping[str, Mapping]],
        *,
        ignore_index: int = 255,
        class_frequencies: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not spec:
            raise ValueError("the loss spec has no head")
        self.ignore_index = ignore_index
        self.class_frequencies = (
            None if class_frequencies is None else np.asarray(class_frequencies)
        )
        self._method_weights: dict[str, Tensor] = {}
        self._terms: list[_Term] = []
        for head, terms in spec.items():
            if not isinstance(terms, Mapping) or not terms:
                raise ValueError(f"head {head!r} must map term names to term specs")
            for term_key, term_spec in terms.items():
                self._terms.append(self._build_term(head, term_key, term_spec))
        for index, term in enumerate(self._terms):
            weights = self._resolve_class_weights(term)
            self.register_buffer(f"_class_weights_{index}", weights, persistent=False)

    def _build_term(self, head: str, term_key: str, term_spec: Mapping) -> _Term:
        key = f"{head}/{term_key}"
        if not isinstance(term_spec, Mapping) or "weight" not in term_spec:
            raise ValueError(f"term {key!r} needs a mapping with a 'weight'")
        name = term_spec.get("term", term_key)
        fn = get_loss(name)
        options = {k: v for k, v in term_spec.items() if k not in _RESERVED}
        allowed, any_kwargs = _keyword_options(fn)
        unknown = sorted(set(options) - allowed) if not any_kwargs else []
        if unknown or "ignore_index" in options:
            raise ValueError(
                f"term {key!r} ({name}): options {unknown or ['ignore_index']} are not accepted; "
                f"allowed: {sorted(allowed - {'ignore_index'})}"
            )
        term = _Term(key, head, name, fn, build_schedule(term_spec["weight"]), options)
        source = term_spec.get("class_weights")
        if source is not None:
            param = "weight" if "weight" in allowed else "alpha" if "alpha" in allowed else None
            if param is None:
                raise ValueError(f"term {key!r} ({name}) takes no class weights")
            if param in options:
                raise ValueError(f"term {key!r}: give class_weights or {param!r}, not both")
            term.class_weight_param = param
            term.class_weight_source = source if isinstance(source, str) else list(source)
        return term

    def _resolve_class_weights(self, term: _Term) -> Tensor | None:
        source = term.class_weight_source
        if source is None:
            return None
        if not isinstance(source, str):
            return torch.as_tensor(source, dtype=torch.float32)
        if source not in WEIGHT_METHODS:
            raise ValueError(f"term {term.key!r}: class_weights {source!r} not in {WEIGHT_METHODS}")
        if self.class_frequencies is None:
            raise ValueError(
                f"term {term.key!r} asks for {source!r} class weights but LossMix got no "
                "class_frequencies"
            )
        if source not in self._method_weights:
            self._method_weights[source] = class_weights_from_frequencies(
                self.class_frequencies, source
            )
        return self._method_weights[source].clone()

    def _call(self, index: int, term: _Term, logits: Tensor, target: Tensor, prep: Prepared):
        options = dict(term.options)
        if term.class_weight_param is not None:
            options[term.class_weight_param] = getattr(self, f"_class_weights_{index}")
        from_prepared = getattr(term.fn, "on_prepared", None)
        if from_prepared is not None:
            return from_prepared(prep, **options)
        return term.fn(logits, target, **options, ignore_index=self.ignore_index)

    def forward(self, outputs: Mapping[str, Tensor], target: Tensor, progress: float) -> LossOutput:
        """Weighted parts and their sum at training ``progress`` in [0, 1]."""
        out = LossOutput(total=torch.zeros(()))
        preps: dict[str, Prepared] = {}
        for index, term in enumerate(self._terms):
            if term.head not in outputs:
                raise ValueError(f"no output {term.head!r} for term {term.key!r}: {list(outputs)}")
            logits = outputs[term.head]
            weight = term.schedule(progress)
            out.weights[term.key] = weight
            if weight == 0.0:
                out.parts[term.key] = torch.zeros((), device=logits.device)
                continue
            with float32_region(logits):
                if term.head not in preps:
                    preps[term.head] = Prepared(logits, target, self.ignore_index)
                value = self._call(index, term, logits, target, preps[term.head])
                if value.dtype not in (torch.float32, torch.float64):
                    value = value.float()
                out.parts[term.key] = weight * value
        total = sum(out.parts.values(), torch.zeros((), device=target.device))
        if not preps:  # every weight is 0: keep a graph so backward() still works
            total = total + outputs[self._terms[0].head].sum() * 0.0
        out.total = total
        return out

    def describe(self) -> dict[str, Any]:
        """Resolved terms, schedules and class weights, for logging."""
        terms = {}
        for index, term in enumerate(self._terms):
            weights = getattr(self, f"_class_weights_{index}")
            terms[term.key] = {
                "term": term.name,
                "weight": repr(term.schedule),
                "options": dict(term.options),
                "class_weights": None if weights is None else weights.tolist(),
                "class_weights_source": term.class_weight_source,
                "class_weights_param": term.class_weight_param,
            }
        return {"ignore_index": self.ignore_index, "terms": terms}
