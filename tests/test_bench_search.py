"""``benchmarks/bench_search.py --quick`` in two steps, as a user adds ways to a study: the
grid and ``tpe+`` first, then every way (the two stored searches read back, ``tpe`` and
``random`` run); run once more, every search is read back from its summary, not run."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import run_benchmark


@dataclass
class Step:
    """One ``--quick`` run: its folder, process and ``results.json`` as it left it."""

    out: Path
    proc: subprocess.CompletedProcess[str]
    results: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The synthetic dataset's rows, a search each."""
        return self.results["datasets"]["synthetic"]["rows"]

    def logs(self) -> dict[Path, int]:
        """Each search's log and when it was last written."""
        return {log: log.stat().st_mtime_ns for log in self.out.glob("synthetic/*/search.log")}


def _step(out: Path, *args: str) -> Step:
    proc = run_benchmark("bench_search.py", out, *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return Step(out, proc, json.loads((out / "results.json").read_text()))


@pytest.fixture(scope="module")
def first_step(tmp_path_factory: pytest.TempPathFactory) -> Step:
    """``--ways tpe+``: the grid (the truth) and TPE with repeats, schedule-aware."""
    return _step(tmp_path_factory.mktemp("bench_search"), "--ways", "tpe+")


@pytest.fixture(scope="module")
def every_way(first_step: Step) -> tuple[Step, dict[Path, int]]:
    """Every way into the same folder, and the first step's logs as it left them."""
    logs = first_step.logs()
    return _step(first_step.out), logs


def _checked_rows(results: dict[str, Any], ways: list[str]) -> dict[str, dict[str, Any]]:
    """The synthetic rows of ``ways``, each checked against the truth table and the epochs
    it could have spent; returned by way."""
    assert results["quick"] and list(results["datasets"]) == ["synthetic"]
    synthetic = results["datasets"]["synthetic"]
    points, epochs = synthetic["grid_points"], synthetic["epochs"]
    assert (points, epochs) == (4, 2) and synthetic["grid_epochs"] == points * epochs
    rows = {row["way"]: row for row in synthetic["rows"]}
    assert sorted(rows) == sorted(ways) and len(synthetic["rows"]) == len(ways)
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
    grid = rows["grid"]
    assert grid["epochs_spent"] == points * epochs  # FIFO, no early stopping
    assert grid["epochs_to_target"] is not None
    assert grid["fraction_of_grid"] == grid["epochs_to_target"] / (points * epochs)
    assert Path(synthetic["plot"]).is_file() and Path(synthetic["plot"]).stat().st_size > 0
    return rows


@pytest.mark.slow
def test_the_first_step_runs_the_grid_and_tpe_plus(first_step: Step) -> None:
    rows = _checked_rows(first_step.results, ["grid", "tpe+"])
    assert rows["tpe+"]["repeats"] >= 1 and rows["tpe+"]["judged_unplayed"] == 0
    assert "done before" not in first_step.proc.stdout
    assert first_step.proc.stdout.count("| grid | 0 | 4 | 8 |") == 1


@pytest.mark.slow
def test_quick_search_benchmark_reads_back_every_way(
    first_step: Step, every_way: tuple[Step, dict[Path, int]]
) -> None:
    step, first_logs = every_way
    rows = _checked_rows(step.results, ["grid", "random", "tpe", "tpe+"])
    assert rows["tpe+"]["judged_unplayed"] == 0
    # the first step's searches were read back, not run again; the new ways ran
    assert step.proc.stdout.count("done before, read back") == 2
    logs = step.logs()
    assert {log: logs[log] for log in first_logs} == first_logs
    assert sorted(log.parent.name for log in logs) == [
        "grid-seed0",
        "random-seed0",
        "tpe+-seed0",
        "tpe-seed0",
    ]
    first_rows = {row["way"]: row for row in first_step.rows}
    for way in ("grid", "tpe+"):
        assert rows[way] == first_rows[way]
    assert "| way | seed | trials | epochs spent | best val mIoU |" in step.proc.stdout
    assert step.proc.stdout.count("| grid | 0 | 4 | 8 |") == 1


@pytest.mark.slow
def test_a_third_quick_run_reads_every_search_back(
    every_way: tuple[Step, dict[Path, int]],
) -> None:
    step, _ = every_way
    logs = step.logs()
    again = _step(step.out)  # every search stored: each read back, none run
    assert again.proc.stdout.count("done before, read back") == 4
    assert again.logs() == logs  # no search's log was written again
    assert again.rows == step.rows
