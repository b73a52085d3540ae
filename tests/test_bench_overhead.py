"""``benchmarks/bench_overhead.py --quick`` runs to the end and writes its numbers.

No timed assertion: the figures depend on the machine; only their presence and sanity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import run_benchmark

LEVEL_KEYS = {
    "threads",
    "plain_epoch_s",
    "trial_epoch_s",
    "epoch_ratio",
    "plain_epoch_wall_s",
    "trial_epoch_wall_s",
    "epoch_wall_ratio",
    "checkpoint_s",
    "plain_wall_s",
    "search_wall_s",
}


def _positive_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_overhead_benchmark_writes_positive_numbers(tmp_path: Path) -> None:
    done = run_benchmark("bench_overhead.py", tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| trials at once |" in done.stdout
    summary = json.loads((tmp_path / "overhead.json").read_text())["summary"]
    assert set(summary["levels"]) == {"1"}
    assert set(summary["levels"]["1"]) == LEVEL_KEYS
    assert all(_positive_finite(v) for v in summary["levels"]["1"].values())
    phases = summary["search_phases_s"]
    assert {"imports", "ray_init", "trial_started", "fit_end", "exit"} <= set(phases)
    assert all(_positive_finite(v) for v in phases.values())
    assert _positive_finite(summary["search_fixed_s"]) and _positive_finite(
        summary["plain_fixed_s"]
    )
