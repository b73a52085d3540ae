"""The loss-term registry: terms by name, their public form, and the one check of their options.

A built-in term is written once, on a shared prepared head::

    @register_loss("focal")
    def focal(prep: Prepared, *, gamma: NonNegative = 2.0, alpha: Alpha = None) -> Tensor: ...

and the decorator returns its public form ``focal(logits, target, *, gamma=2.0, alpha=None,
ignore_index=255)``: it checks the options, prepares the head and calls the term, which stays
reachable as ``focal.on_prepared`` so that :class:`~tune_losses.losses.mix.LossMix` runs one
softmax for every term of a head. A user term is a plain ``fn(logits, target, *, <options>,
ignore_index=255)``, registered by the same decorator or named by dotted path ``"pkg.mod:fn"``.

Options are checked against a pydantic model read off the term's signature: the annotations
(with their bounds, e.g. ``Annotated[float, Field(ge=0)]``) and defaults are the rule, so a
term's body trusts its options. Only checks that need the data (a per-class list against the
number of classes) stay in the terms.

Example:
    >>> from tune_losses.losses import get_loss, list_losses
    >>> get_loss("ce").__name__, list_losses("*focal")
    ('cross_entropy', ['boundary_focal', 'focal'])
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator
from torch import Tensor

from ._functional import Prepared, float32_region

LossFn = Callable[..., Tensor]
OptionsCheck = Callable[[Any], None]
LOSSES: dict[str, LossFn] = {}

_NOT_OPTIONS = ("logits", "target", "ignore_index")
_P = inspect.Parameter


def register_loss(name: str, *, check: OptionsCheck | None = None) -> Callable[[LossFn], LossFn]:
    """Decorator: add a term to :data:`LOSSES` under ``name`` and return its public form.

    Args:
        name: the registry key (the YAML term key).
        check: optional rule across options (it gets the validated options and raises
            ``ValueError``), for what one option's annotation cannot say.

    A term ``fn(prep, *, <options>)`` becomes ``fn(logits, target, *, <options>,
    ignore_index=255)``; a term already in that form is registered as it is.
    """

    def decorate(fn: LossFn) -> LossFn:
        known = LOSSES.get(name)
        if known is not None and getattr(known, "on_prepared", known) is not fn:
            raise ValueError(f"loss {name!r} is already registered ({known.__qualname__})")
        positional = [p for p in inspect.signature(fn).parameters.values() if p.default is _P.empty]
        positional = [p for p in positional if p.kind is not _P.KEYWORD_ONLY]
        if len(positional) == 1:
            public = _public_form(fn, check)
        elif len(positional) == 2 and check is None:
            public = fn
        else:
            raise ValueError(
                f"loss {name!r}: a term is fn(prep, *, options) or "
                "fn(logits, target, *, options, ignore_index=255)"
            )
        LOSSES[name] = public
        return public

    return decorate


def _public_form(term: LossFn, check: OptionsCheck | None) -> LossFn:
    """``term(prep, *, options)`` as ``loss(logits, target, *, options, ignore_index=255)``."""
    hints = typing.get_type_hints(term, include_extras=True)
    options = [
        p.replace(annotation=hints.get(p.name, Any))
        for p in inspect.signature(term).parameters.values()
        if p.kind is _P.KEYWORD_ONLY
    ]
    model = _options_model(term, tuple(options), check)

    @functools.wraps(term)
    def loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255, **given: Any) -> Tensor:
        try:
            checked = _checked(model, given)
        except ValidationError as exc:
            raise ValueError(f"{term.__name__}: {one_line(exc)}") from None
        with float32_region(logits):
            return term(Prepared(logits, target, ignore_index), **checked)

    parameters = [
        _P("logits", _P.POSITIONAL_OR_KEYWORD, annotation=Tensor),
        _P("target", _P.POSITIONAL_OR_KEYWORD, annotation=Tensor),
        *options,
        _P("ignore_index", _P.KEYWORD_ONLY, default=255, annotation=int),
    ]
    loss.__signature__ = inspect.Signature(parameters, return_annotation=Tensor)  # type: ignore[attr-defined]
    loss.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": Tensor}
    loss.on_prepared = term  # type: ignore[attr-defined]
    loss.options_model = model  # type: ignore[attr-defined]
    return loss


def _options_model(
    fn: LossFn, options: tuple[inspect.Parameter, ...], check: OptionsCheck | None = None
) -> type[BaseModel]:
    """A strict pydantic model of keyword-only ``options`` (annotation and default each)."""
    fields: dict[str, Any] = {
        p.name: (p.annotation, ... if p.default is _P.empty else p.default) for p in options
    }
    takes_any = any(p.kind is _P.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    config = ConfigDict(extra="allow" if takes_any else "forbid", arbitrary_types_allowed=True)
    validators = {} if check is None else {"check": model_validator(mode="after")(_run(check))}
    return create_model(
        f"{fn.__name__}_options", __config__=config, __validators__=validators, **fields
    )


def _run(check: OptionsCheck) -> Callable[[BaseModel], BaseModel]:
    """``check`` as a pydantic after-validator (it returns the model it checked)."""

    def run(model: BaseModel) -> BaseModel:
        check(model)
        return model

    return run


@functools.cache
def options_model(fn: LossFn) -> type[BaseModel]:
    """The pydantic model of a term's options: the registered one, or read off its signature."""
    model = getattr(fn, "options_model", None)
    if model is not None:
        return model
    hints = typing.get_type_hints(fn, include_extras=True)
    options = tuple(
        p.replace(annotation=hints.get(p.name, Any))
        for p in inspect.signature(fn).parameters.values()
        if p.kind is _P.KEYWORD_ONLY and p.name not in _NOT_OPTIONS
    )
    return _options_model(fn, options)


def _checked(model: type[BaseModel], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options the caller gave, validated, in signature order (defaults left to the term)."""
    checked = model.model_validate(given)
    out = {k: getattr(checked, k) for k in model.model_fields if k in checked.model_fields_set}
    out.update(checked.model_extra or {})
    return out


def validate_options(fn: LossFn, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``fn``'s options; raises pydantic's ``ValidationError``."""
    return _checked(options_model(fn), given)


def one_line(exc: ValidationError, skip: Collection[str] = (), prefix: str = "") -> str:
    """``prefix.field.path: message`` of the first error; union-member labels and ``skip``
    (labels such as a tagged union's) are left out of the path."""
    err = exc.errors()[0]
    loc = [p for p in map(str, err["loc"]) if (p.isidentifier() or p.isdigit()) and p not in skip]
    path = ".".join([prefix, *loc] if prefix else loc)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


def list_losses(filter: str = "") -> list[str]:  # noqa: A002 (timm's name)
    """Registered term names, sorted; ``filter`` is a shell pattern such as ``"*focal*"``."""
    return sorted(n for n in LOSSES if not filter or fnmatch.fnmatchcase(n, filter))


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
    raise ValueError(f"unknown loss {name!r}{hint}. Known losses: {', '.join(list_losses())}")
