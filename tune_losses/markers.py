"""The marker syntax of a search space: which mappings are markers, their options and
bounds (checked, each error one line naming the parameter), and walking or resolving a tree.

A marker is a one-key mapping standing where a value stands (see :mod:`tune_losses.space`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tune_losses.config import ConfigError
from tune_losses.names import mlflow_name_problem

MARKERS = ("uniform", "loguniform", "int", "choice", "grid")
FLOAT_MARKERS = ("uniform", "loguniform")


def marker_of(node: Any) -> str | None:
    """The marker name if ``node`` is a one-key marker mapping, else None."""
    if isinstance(node, Mapping) and len(node) == 1:
        key = next(iter(node))
        if key in MARKERS:
            return key
    return None


def option_label(option: Any, index: int) -> str:
    """A short readable label for a choice option (used as the categorical value)."""
    if option is None:
        return "none"
    if isinstance(option, bool | int | float | str):
        return str(option)
    if isinstance(option, Mapping):
        for key in ("term", "schedule"):
            if isinstance(option.get(key), str):
                return option[key]
        marker = marker_of(option)
        if marker is not None:
            return marker
    return f"option{index}"


def options_of(name: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """The labelled options of a choice/grid marker, checked."""
    raw = next(iter(node.values()))
    if isinstance(raw, Mapping):
        opts = {str(k): v for k, v in raw.items()}
        for label in opts:  # a label names the parameters of its option's markers
            problem = mlflow_name_problem(label)
            if problem is not None:
                raise ConfigError(f"{name}: option {problem}")
    elif isinstance(raw, list):
        labels = [option_label(o, i) for i, o in enumerate(raw)]
        if len(set(labels)) != len(labels) or any(map(mlflow_name_problem, labels)):
            labels = [f"option{i}" for i in range(len(raw))]
        opts = dict(zip(labels, raw, strict=True))
    else:
        raise ConfigError(f"{name}: {marker_of(node)} expects a list or a mapping of options")
    if not opts:
        raise ConfigError(f"{name}: {marker_of(node)} needs at least one option")
    return opts


def bounds_of(name: str, node: Mapping[str, Any]) -> tuple[float, float]:
    """The checked ``[low, high]`` of a numeric marker."""
    kind = marker_of(node)
    raw = node[kind]
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    ):
        raise ConfigError(f"{name}: {kind} expects [low, high], got {raw!r}")
    lo, hi = raw
    if not lo < hi:
        raise ConfigError(f"{name}: {kind} needs low < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{name}: loguniform needs low > 0, got {lo}")
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{name}: int expects integer bounds, got [{lo}, {hi}]")
    return lo, hi


def join(path: str, key: str) -> str:
    """The parameter name of ``key`` under ``path``."""
    return f"{path}.{key}" if path else key


def walk_markers(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every marker in the tree with its parameter name, options' markers included."""
    kind = marker_of(node)
    if kind in ("choice", "grid"):
        yield path, node
        for label, opt in options_of(path, node).items():
            yield from walk_markers(opt, join(path, label))
    elif kind is not None:
        yield path, node
    elif isinstance(node, Mapping):
        for key, child in node.items():
            yield from walk_markers(child, join(path, str(key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from walk_markers(child, join(path, str(i)))


def resolve(node: Any, path: str, pick: Callable[[str, Mapping[str, Any]], Any]) -> Any:
    """A concrete copy of ``node``: each marker replaced by ``pick(name, marker)``'s choice."""
    kind = marker_of(node)
    if kind in ("choice", "grid"):
        opts = options_of(path, node)
        label = pick(path, node)
        opt = opts[label]
        return resolve(opt, join(path, label), pick)
    if kind is not None:
        return pick(path, node)
    if isinstance(node, Mapping):
        return {k: resolve(v, join(path, str(k)), pick) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, join(path, str(i)), pick) for i, v in enumerate(node)]
    return copy.deepcopy(node)


def categorical_name(path: str, node: Mapping[str, Any]) -> str:
    """Optuna's name of a choice or grid marker's categorical: ``P.choice``, ``P.grid``."""
    return join(path, marker_of(node) if marker_of(node) == "grid" else "choice")
