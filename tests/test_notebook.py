"""notebooks/review_search.ipynb: stored without outputs, and runs end to end on a real
tiny search's MLflow store (executed by nbclient, parameters through the environment)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, TinySearch

NOTEBOOK = ROOT / "notebooks" / "review_search.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    for name in ("TRACKING_URI", "EXPERIMENT", "SEARCH"):
        assert f"{name} = os.environ.get(" in first.source


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_search(
    tiny_search: TinySearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    assert tiny_search.proc.returncode == 0, tiny_search.proc.stderr[-3000:]
    monkeypatch.setenv("TUNE_LOSSES_TRACKING_URI", tiny_search.uri)
    monkeypatch.setenv("TUNE_LOSSES_EXPERIMENT", tiny_search.experiment)
    monkeypatch.delenv("TUNE_LOSSES_SEARCH", raising=False)  # the latest search
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "search space-" in text and "6 finished" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # curves, importances, schedules, the winner's predictions
    assert "Downloading artifacts" not in text
