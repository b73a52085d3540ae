"""``benchmarks/bench_search.py --quick``: four searches run, their numbers read back; run
again, each search is read back from its summary, not run."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from conftest import run_benchmark


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``--quick`` run (the grid and three ways of searching) and its folder."""
    out = tmp_path_factory.mktemp("bench_search")
    return out, run_benchmark("bench_search.py", out)


@pytest.mark.slow
def test_quick_search_benchmark_reads_back_every_way(
    quick_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, done = quick_run
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] and list(results["datasets"]) == ["synthetic"]
    synthetic = results["datasets"]["synthetic"]
    points, epochs = synthetic["grid_points"], synthetic["epochs"]
    assert (points, epochs) == (4, 2) and synthetic["grid_epochs"] == points * epochs
    rows = {row["way"]: row for row in synthetic["rows"]}
    assert sorted(rows) == ["grid", "random", "tpe", "tpe+"] and len(synthetic["rows"]) == 4
    truth = synthetic["truth"]
    assert len(truth) == points and all(t["n"] == 1 for t in truth.values())
    best_true = max(t["mean"] for t in truth.values())
    for way, row in rows.items():
        repeats = row.get("repeats", 0)
        assert row["trials"] == points + repeats  # every trial asked for was read back
        assert row["epochs_spent"] == row["epochs_run_tags"]  # history and tags agree
        assert math.isfinite(row["best"]) and 0.0 <= row["best"] <= 100.0
        reach = row["epochs_to_target"]
        assert reach is None or 1 <= reach <= row["epochs_spent"]
        if way != "grid":  # ASHA: each trial trains its grace period, at most all epochs
            assert points <= row["epochs_spent"] <= (points + repeats) * epochs
            # scored by the truth: the chosen point's true mean, never retrained
            assert row["chosen"] in truth
            assert row["regret"] == best_true - truth[row["chosen"]]["mean"] >= 0
            assert row["retrained"] == 0
    assert rows["tpe+"]["judged_unplayed"] == 0
    grid = rows["grid"]
    assert grid["epochs_spent"] == points * epochs  # FIFO, no early stopping
    assert grid["epochs_to_target"] is not None
    assert grid["fraction_of_grid"] == grid["epochs_to_target"] / (points * epochs)
    assert Path(synthetic["plot"]).is_file() and Path(synthetic["plot"]).stat().st_size > 0
    assert "| way | seed | trials | epochs spent | best val mIoU |" in done.stdout
    assert done.stdout.count("| grid | 0 | 4 | 8 |") == 1


@pytest.mark.slow
def test_a_second_quick_run_reads_every_search_back(
    quick_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, done = quick_run
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    first = json.loads((out / "results.json").read_text())["datasets"]["synthetic"]
    logs = {log: log.stat().st_mtime_ns for log in out.glob("synthetic/*/search.log")}
    assert len(logs) == 4
    again = run_benchmark("bench_search.py", out)  # stored searches are read back, not run
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done before, read back") == 4
    assert {log: log.stat().st_mtime_ns for log in logs} == logs  # no search ran again
    rows_again = json.loads((out / "results.json").read_text())["datasets"]["synthetic"]
    assert rows_again["rows"] == first["rows"]
