"""What MLflow can store as a param or metric name, checked where names enter (no MLflow here).

Term keys, class names and choice labels become parts of MLflow names
(``train/loss/<head>/<term>``, ``val/IoU/<class>``, ``loss.aux.extra.<label>.weight``); a name
MLflow refuses would fail in the middle of a search, so the config, the data and the space
check them up front with these rules (MLflow's own, ``mlflow/utils/validation.py``, without
the colon that Windows stores refuse).
"""

from __future__ import annotations

import posixpath
import re

_MLFLOW_NAME = re.compile(r"[/\w.\- ]*")
_KEY = re.compile(r"[\w\-]+")


def mlflow_name_problem(name: str) -> str | None:
    """Why MLflow cannot store ``name`` as a param or metric name, or None when it can."""
    if not _MLFLOW_NAME.fullmatch(name):
        return (
            f"{name!r} cannot be stored in MLflow (names hold only letters, digits, "
            "'_', '-', '.', ' ' and '/')"
        )
    path = posixpath.normpath(name)
    if path != name or name.startswith(("/", "..")):
        return f"{name!r} cannot be stored in MLflow (it reads as the path {path!r})"
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be one segment of a dotted param and a slashed metric name, or None.

    Letters, digits, ``_`` and ``-`` only: a ``.`` or ``/`` would split the segment in two
    and MLflow refuses most other characters.
    """
    if not _KEY.fullmatch(key):
        return (
            f"{key!r} is not a valid name: use letters, digits, '_' and '-' only "
            "(it becomes part of MLflow param and metric names)"
        )
    return None
