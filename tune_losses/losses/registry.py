"""Name -> loss term registry (a plain dict filled by a decorator, as in timm's model registry).

A term is ``fn(logits [B,C,H,W], target [B,H,W], *, <keyword-only options>,
ignore_index: int = 255) -> 0-dim Tensor``. Built-in terms also carry ``fn.from_prepared``,
the same computation on a shared :class:`~tune_losses.losses._functional.Prepared` head, which
:class:`~tune_losses.losses.mix.LossMix` uses so that one softmax serves every term of a head.

Example:
    >>> from tune_losses.losses import get_loss
    >>> get_loss("ce").__name__
    'cross_entropy'
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from torch import Tensor

LossFn = Callable[..., Tensor]
LOSSES: dict[str, LossFn] = {}


def register_loss(
    name: str, *, from_prepared: Callable[..., Tensor] | None = None
) -> Callable[[LossFn], LossFn]:
    """Decorator: add ``fn`` to :data:`LOSSES` under ``name`` (optionally with its shared form)."""

    def decorate(fn: LossFn) -> LossFn:
        if name in LOSSES and LOSSES[name] is not fn:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__qualname__})")
        if from_prepared is not None:
            fn.from_prepared = from_prepared  # type: ignore[attr-defined]
        LOSSES[name] = fn
        return fn

    return decorate


def get_loss(name: str) -> LossFn:
    """Look a term up by registry name, or import it from a dotted path ``"pkg.mod:fn"``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import loss {name!r}: {exc}") from exc
        if not callable(fn):
            raise ValueError(f"loss {name!r} is not callable")
        return fn
    if name in LOSSES:
        return LOSSES[name]
    close = difflib.get_close_matches(name, LOSSES, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise ValueError(f"unknown loss {name!r}{hint}. Known losses: {', '.join(sorted(LOSSES))}")
