"""The layering of DESIGN.md: Ray only at the edge (``tune_losses.tune``)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules",
    [
        "tune_losses.train, tune_losses.tracking, tune_losses.report, tune_losses.evaluate",
        "tune_losses.search",
        "tune_losses.engine, tune_losses.space, tune_losses.losses",
    ],
)
def test_importing_leaves_ray_out(modules: str) -> None:
    """``--address`` sets RAY_AUTH_MODE=token, which Ray reads when it is imported, and a
    plain training run should not pay for Ray: these modules must not import it."""
    code = f"import sys, {modules}; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    if "tracking" in modules:
        assert loaded == "['mlflow']"
    else:
        assert loaded == "[]"


def test_trial_processes_and_the_driver_import_only_what_they_use() -> None:
    """Workers never log (the driver does), so the trainable Ray unpickles in every trial
    process must not pull in MLflow; and only PB2 needs scikit-learn (Ray's PB2 imports
    it), not every search's Tuner, PBT code and summary. Each would be seconds of imports
    for every trial process or search."""
    code = (
        "import sys, tune_losses.tune.trainable; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules)); "
        "import tune_losses.tune.tuner, tune_losses.tune.pbt, tune_losses.tune.summary; "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['ray']", "False"]


def test_import_contracts_hold() -> None:
    """The import-linter contracts in pyproject.toml (also run by ``make test``)."""
    lint = [sys.executable, "-m", "importlinter.cli", "--no-cache"]
    result = subprocess.run(lint, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
