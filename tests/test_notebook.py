"""notebooks/review_search.ipynb: stored without outputs, and runs end to end on a real
tiny search's MLflow store (executed by nbclient, parameters through the environment)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOK, TinySearch, run_notebook


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
    assert tiny_search.proc.returncode == 0, tiny_search.proc.stderr[-3000:]
    nb = run_notebook(tiny_search.uri, tiny_search.experiment, tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "search space-" in text and "6 finished" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # curves, importances, schedules, the winner's predictions
    assert "Downloading artifacts" not in text
