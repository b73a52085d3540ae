"""LossMix: the weighted, scheduled sum of loss terms over a model's output heads."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tune_losses.schedules import Schedule, build_schedule

from ._functional import Prepared, float32_region
from .class_weights import class_weights_from_frequencies
from .registry import LossFn, get_loss
from .spec import TermSpec, class_weight_target, loss_heads, loss_weighting, validate_loss


@dataclass
class LossOutput:
    """Result of :meth:`LossMix.forward`.

    Attributes:
        total: 0-dim tensor to back-propagate, the sum of ``parts``.
        parts: weighted value of each term, keys ``"{head}/{term_key}"`` (with uncertainty
            weighting, ``exp(-s) * weight * term + s / 2``).
        weights: effective weight of each term at this progress, same keys (with
            uncertainty weighting, ``exp(-s) * weight``).
        scheduled: the weight each term's schedule gives at this progress, same keys (equal
            to ``weights`` with fixed weighting): what a replayed schedule reproduces.
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    scheduled: dict[str, float] = field(default_factory=dict)


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


def _resolve(head: str, key: str, spec: TermSpec) -> _Term:
    """A validated term spec resolved: its function, its schedule, its class-weight option."""
    name = spec.name(key)
    fn = get_loss(name)
    term = _Term(f"{head}/{key}", head, name, fn, build_schedule(spec.weight), spec.options)
    if spec.class_weights is not None:
        term.class_weight_param = class_weight_target(fn)
        term.class_weight_source = spec.class_weights
    return term


class LossMix(nn.Module):
    """Weighted sum of loss terms per head, each weight a number or a schedule of progress.

    Terms of one head share one softmax (:class:`~tune_losses.losses._functional.Prepared`);
    a term whose weight is 0 at the current progress is not computed at all.

    With ``weighting: uncertainty`` the mix also learns one log-variance ``s_i`` per term
    (a parameter, trained with the model, starting at 0) and adds
    ``exp(-s_i) * w_i * L_i + s_i / 2``: the homoscedastic-uncertainty weighting of Kendall,
    Gal and Cipolla, "Multi-task learning using uncertainty to weigh losses", CVPR 2018
    (eq. 10, the classification form ``L / sigma^2 + log sigma`` with ``s = log sigma^2``).
    A term whose scheduled weight is 0 is left out, regulariser included, so its ``s`` is not
    driven down while it is off.

    Args:
        spec: ``{head: {term_key: TermSpec}}`` as the config holds it (validated there by
            :func:`~tune_losses.losses.spec.validate_loss`, and trusted here), or a raw
            mapping ``{head: {term_key: {"weight": number | schedule mapping, "term":
            registry name or "pkg.mod:fn" (default: term_key), "class_weights": method name
            or per-class list (for terms with a ``weight`` or ``alpha`` option),
            **options}}}``, which goes through that same function; the key ``weighting``
            (``fixed`` or ``uncertainty``) says how the terms combine.
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
        spec: Mapping[str, Mapping[str, TermSpec | Mapping[str, Any] | None] | str],
        *,
        ignore_index: int = 255,
        class_frequencies: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.class_frequencies = (
            None if class_frequencies is None else np.asarray(class_frequencies)
        )
        self._method_weights: dict[str, Tensor] = {}
        checked = validate_loss(spec)
        self.weighting = loss_weighting(checked)
        self._terms = [
            _resolve(head, key, term)
            for head, terms in loss_heads(checked).items()
            for key, term in terms.items()
        ]
        learned = self.weighting == "uncertainty"
        self.log_vars: nn.Parameter | None
        self.register_parameter(
            "log_vars", nn.Parameter(torch.zeros(len(self._terms))) if learned else None
        )
        if not self._terms:  # valid in a search space (every term "none"), not trainable
            raise ValueError("every term of the loss is switched off")
        for index, term in enumerate(self._terms):
            weights = self._resolve_class_weights(term)
            self.register_buffer(f"_class_weights_{index}", weights, persistent=False)

    def _resolve_class_weights(self, term: _Term) -> Tensor | None:
        source = term.class_weight_source
        if source is None:
            return None
        if not isinstance(source, str):
            return torch.as_tensor(source, dtype=torch.float32)
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
        on_prepared = getattr(term.fn, "on_prepared", None)
        if on_prepared is not None:
            return on_prepared(prep, **options)
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
            out.weights[term.key] = out.scheduled[term.key] = weight
            if weight == 0.0:
                out.parts[term.key] = torch.zeros((), device=logits.device)
                continue
            with float32_region(logits):
                if term.head not in preps:
                    preps[term.head] = Prepared(logits, target, self.ignore_index)
                value = self._call(index, term, logits, target, preps[term.head])
                if value.dtype not in (torch.float32, torch.float64):
                    value = value.float()
                if self.log_vars is None:
                    out.parts[term.key] = weight * value
                else:
                    s = self.log_vars[index]
                    out.parts[term.key] = torch.exp(-s) * weight * value + 0.5 * s
                    out.weights[term.key] = weight * math.exp(-float(s.detach()))
        total = sum(out.parts.values(), torch.zeros((), device=target.device))
        if not preps:  # every weight is 0: keep a graph so backward() still works
            total = total + outputs[self._terms[0].head].sum() * 0.0
        out.total = total
        return out

    def check(self, outputs: Mapping[str, Tensor], target: Tensor) -> None:
        """Compute every term once, whatever its weight, so a bad option fails here."""
        preps: dict[str, Prepared] = {}
        for index, term in enumerate(self._terms):
            logits = outputs[term.head]
            with float32_region(logits):
                prep = preps.setdefault(term.head, Prepared(logits, target, self.ignore_index))
                self._call(index, term, logits, target, prep)

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
        return {"ignore_index": self.ignore_index, "weighting": self.weighting, "terms": terms}
