"""benchmarks/bench_gain.py --quick: the whole protocol (search, four variants, test metrics,
tables, plot) end to end on the synthetic set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import run_benchmark


@pytest.mark.slow
def test_bench_gain_quick(tmp_path: Path) -> None:
    done = run_benchmark("bench_gain.py", tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "gain.json").read_text())
    assert list(results) == ["ce", "paddleseg", "uncertainty", "searched"]
    for runs in results.values():
        assert len(runs) == 1 and runs[0]["epochs"] == 2
        for key in ("val_mIoU", "val_boundary_IoU", "test_mIoU", "test_boundary_IoU"):
            assert 0.0 <= runs[0][key] <= 100.0
        assert all(0.0 <= v <= 100.0 for v in runs[0]["test_iou"].values() if not math.isnan(v))
    # the searched variant trains the search's best loss, unchanged
    best = next((tmp_path / "ray_results").glob("*/best_config.yaml"))
    searched = tmp_path / "runs" / "quick_config" / "searched" / "seed0" / "variant.yaml"
    assert yaml.safe_load(searched.read_text())["loss"] == yaml.safe_load(best.read_text())["loss"]
    uncertainty = json.loads(
        (tmp_path / "runs" / "quick_config" / "uncertainty" / "seed0" / "best.json").read_text()
    )
    assert uncertainty["loss_setup"]["weighting"] == "uncertainty"
    table = (tmp_path / "gain.md").read_text()
    assert "| searched | 1 |" in table and "| class |" in table
    assert (tmp_path / "per_class_iou.png").stat().st_size > 10_000
