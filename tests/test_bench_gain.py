"""benchmarks/bench_gain.py: a thin driver of the product's baselines and confirm stage.

The quick study runs the ``tpe`` stage end to end on the synthetic set and reads its table
back against MLflow; the ``random`` stage's command and the report's arithmetic are checked
without a second search (the random sampler has its own end-to-end tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from conftest import ROOT, run_benchmark
from tune_losses.tiny import tiny_experiment


def bench_gain() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_gain", ROOT / "benchmarks" / "bench_gain.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gain"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bench_gain.py --quick --stages tpe``: its output folder."""
    out = tmp_path_factory.mktemp("gain")
    done = run_benchmark("bench_gain.py", out, "--stages", "tpe")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_quick_study_reads_back_the_confirm_runs(quick_study: Path) -> None:
    from mlflow.tracking import MlflowClient

    tmp_path = quick_study
    result = json.loads((tmp_path / "gain.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'tpe' / 'mlruns.db'}")
    exp = client.get_experiment_by_name(f"{tmp_path.name}_tpe")
    runs = client.search_runs([exp.experiment_id], "tags.confirm != ''")
    # one searched arm (top_k 1) and the baseline, each at 2 seeds the search never trained at
    by_arm: dict[str, set[int]] = {}
    for r in runs:
        by_arm.setdefault(r.data.tags["confirm"], set()).add(int(r.data.tags["seed"]))
    searched = sorted(a for a in by_arm if a != "base ce")
    assert len(searched) == 1 and searched[0].startswith("t") and "base ce" in by_arm
    assert by_arm[searched[0]] == by_arm["base ce"] and 0 not in by_arm["base ce"]
    assert len(runs) == 4
    logged = {
        (r.data.tags["confirm"], int(r.data.tags["seed"])): r.data.metrics["val/mIoU"] for r in runs
    }
    for row in result["rows"]:
        arm = row["arm"].removeprefix("tpe ")
        per_seed = [logged[(arm, s)] for s in row["seeds"]]
        assert row["mIoU_per_seed"] == pytest.approx(per_seed)
    (g,) = [g for g in result["gains"] if g["metric"] == "mIoU"]
    diffs = [logged[(g["a"][4:], s)] - logged[(g["b"], s)] for s in g["seeds"]]
    assert g["gain"] == pytest.approx(sum(diffs) / 2)
    half = 12.706204736174707 * abs(diffs[0] - diffs[1]) / 2  # t_0.975,1 * sd / sqrt(2)
    assert (g["low"], g["high"]) == pytest.approx((g["gain"] - half, g["gain"] + half))
    parts = {c["part"]: c for c in result["compute"]}
    assert parts["confirm"]["runs"] == 4 and parts["confirm"]["epochs"] == 4 * 2
    assert parts["baselines"]["epochs"] == 2 and parts["search"]["runs"] == 2
    table = (tmp_path / "gain.md").read_text()
    assert "| tpe t" in table and "| base ce |" in table and "Paired gains" in table
    assert (tmp_path / "per_class_iou.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_fullres_stage_trains_the_winner_and_the_best_baseline(
    quick_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fullres stage trains the confirmed winner and the best baseline on another
    config (the tiny one here, in this process) and scores their last weights on the
    split."""
    from tune_losses import evaluate, train

    tmp_path = quick_study
    result = json.loads((tmp_path / "gain.json").read_text())
    module = bench_gain()
    clis = {"tune_losses.train": train.main, "tune_losses.evaluate": evaluate.main}
    monkeypatch.setattr(module, "run", lambda cmd, log: _ok(clis[cmd[2]](cmd[3:])))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment()))
    args = module.parse_args(["--out", str(tmp_path), "--fullres-config", str(config)])
    args.fullres_seeds, args.fullres_epochs, args.split = [7], 1, "val"
    args.fullres_parallel = 1  # train and evaluate run in this process here: one at a time
    module.fullres(args)
    scores = module.fullres_scores(args)
    best = next(r["arm"] for r in result["rows"] if r["arm"].startswith("tpe "))
    assert sorted(scores) == sorted([best, "base ce"]) and all(
        list(s) == [7] for s in scores.values()
    )
    plan = json.loads(next((tmp_path / "tpe" / "ray").glob("*/confirm_arms.json")).read_text())
    arm = next(a for a in plan["arms"] if a["label"] == best.removeprefix("tpe "))
    folder = module.fullres_folder(args, best, 7)
    variant = yaml.safe_load((folder / "variant.yaml").read_text())
    assert variant["loss"] == arm["config"]["experiment"]["loss"]
    assert variant["train"]["seed"] == 7 and variant["train"]["epochs"] == 1
    assert variant["train"]["threads"] == (os.cpu_count() or 1)  # the cores, one run at a time
    report = json.loads((folder / "eval_val.json").read_text())
    assert scores[best][7]["mIoU"] == pytest.approx(report["mIoU"])


def _ok(code: int) -> None:
    assert code == 0


def test_the_random_stage_searches_the_same_space_without_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = bench_gain()
    commands: list[list[str]] = []
    monkeypatch.setattr(module, "run", lambda cmd, logfile: commands.append(cmd))
    args = module.parse_args(["--out", str(tmp_path / "study"), "--search-seed", "3"])
    args.out = args.out.resolve()
    module.search(args, "random")
    monkeypatch.setattr(module, "parent_of", lambda *_: (None, _Parent("RUNNING")))
    module.search(args, "random")
    monkeypatch.setattr(module, "parent_of", lambda *_: (None, _Parent("FINISHED")))
    module.search(args, "random")  # a finished stage is not run again
    first, resumed = commands
    assert first[first.index("--space") + 1] == str(args.space)
    assert "--set=search.sampler=random" in first and "--set=search.baselines=null" in first
    assert first[first.index("--experiment") + 1] == "study_random"
    assert first[first.index("--seed") + 1] == "3" and "--resume" not in first
    assert resumed == [*first, "--resume"]


class _Parent:
    def __init__(self, status: str) -> None:
        self.info = type("Info", (), {"status": status})()


def test_the_report_ranks_arms_and_pairs_the_winners() -> None:
    module = bench_gain()
    iou = {"IoU/road": 90.0, "IoU/pole": 0.0}
    arms = {
        "tpe t03": {
            s: {"mIoU": v, "boundary_IoU": 30.0 + s, **iou}
            for s, v in {2: 41.0, 3: 43.0, 4: 45.0}.items()
        },
        "tpe t07": {s: {"mIoU": 40.0, "boundary_IoU": 30.0} for s in (2, 3, 4)},
        "base ce": {
            s: {"mIoU": v, "boundary_IoU": 30.0} for s, v in {2: 40.0, 3: 41.0, 4: 42.0}.items()
        },
        "random t01": {s: {"mIoU": v, "boundary_IoU": 29.0} for s, v in {2: 39.0, 3: 40.0}.items()},
    }
    rows = module.summary_rows(arms)
    assert [r["arm"] for r in rows] == ["tpe t03", "base ce", "tpe t07", "random t01"]
    assert rows[0]["mIoU_sd"] == pytest.approx(2.0) and rows[0]["zero_classes"] == ["pole"]
    gains = {(g["a"], g["b"], g["metric"]): g for g in module.comparisons(arms, rows)}
    # tpe t03 - base ce: differences 1, 2, 3 -> mean 2, sd 1, t_0.975,2 = 4.302653
    g = gains[("tpe t03", "base ce", "mIoU")]
    half = 4.302652729911275 / math.sqrt(3)
    assert (g["gain"], g["low"], g["high"]) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert gains[("tpe t03", "base ce", "boundary_IoU")]["gain"] == pytest.approx(3.0)
    # random t01 has seeds 2 and 3 only: paired over those two
    g = gains[("tpe t03", "random t01", "mIoU")]
    assert g["seeds"] == [2, 3] and g["gain"] == pytest.approx(2.5)
    assert g["low"] == pytest.approx(2.5 - 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2))
