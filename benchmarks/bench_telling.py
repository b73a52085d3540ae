"""What telling Optuna the truth buys: ASHA-stopped trials as PRUNED vs Ray's COMPLETE.

Usage:
    .venv/bin/python benchmarks/bench_telling.py [--seeds 0 1 2] [--num-samples 16]
        [--space search_spaces/quickstart.yaml] [--out benchmarks/telling]

For every seed, the same search (same space, sampler seed, trials and ASHA settings) runs
twice, one after the other: once as the project runs it (``TellingOptunaSearch``: stopped
trials PRUNED with their per-epoch values) and once with Ray's stock
``OptunaSearch.on_trial_complete`` (a stopped trial's last value told as COMPLETE). It
prints, per run, the best ``best_val_mIoU`` the search reached and the epochs it spent,
read back from the MLflow store of that run, then the mean and spread per telling. Each run
is a child process (``--one MODE SEED``) so that Ray starts fresh; logs go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("pruned", "complete")


def one(mode: str, seed: int, args: argparse.Namespace) -> int:
    """Run one search in this process with the given telling; returns its exit code."""
    from ray.tune.search.optuna import OptunaSearch

    from tune_losses.tune import cli, searcher

    if mode == "complete":
        searcher.TellingOptunaSearch.on_trial_complete = OptunaSearch.on_trial_complete
    run = Path(args.out) / f"{mode}-seed{seed}"
    return cli.main(
        [
            "--space",
            args.space,
            "--seed",
            str(seed),
            "--num-samples",
            str(args.num_samples),
            "--storage",
            str(run / "ray"),
            "--tracking-uri",
            f"sqlite:///{run / 'mlruns.db'}",
            "--experiment",
            "telling",
        ]
    )


def measure(run: Path) -> dict[str, float]:
    """Best value and epochs spent of the search stored in ``run``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp = client.get_experiment_by_name("telling")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    best = max(r.data.metrics.get("best_val_mIoU", float("nan")) for r in children)
    epochs = sum(int(r.data.tags.get("epochs_run", 0)) for r in children)
    pruned = sum(r.data.tags.get("stop_reason") == "asha" for r in children)
    return {"best": best, "epochs": epochs, "trials": len(children), "stopped": pruned}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "telling"))
    p.add_argument("--one", nargs=2, metavar=("MODE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args.one[0], int(args.one[1]), args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for seed in args.seeds:
        for mode in MODES:
            run = out / f"{mode}-seed{seed}"
            log = out / f"{mode}-seed{seed}.log"
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", mode, str(seed), "--out", str(out)]
            cmd += ["--num-samples", str(args.num_samples), "--space", args.space]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, in Ray's workers too
            with log.open("w") as fh:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            code = proc.returncode
            row = {"mode": mode, "seed": seed, "exit": code, "minutes": 0.0}
            row["minutes"] = round((time.perf_counter() - t0) / 60, 1)
            if code == 0:
                row.update(measure(run))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n| telling | seed | best val mIoU | epochs spent | trials stopped by ASHA |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["exit"] == 0:
            cells = (r["mode"], r["seed"], f"{r['best']:.2f}", r["epochs"], r["stopped"])
            print("| " + " | ".join(map(str, cells)) + " |")
    for mode in MODES:
        bests = [r["best"] for r in rows if r["mode"] == mode and r["exit"] == 0]
        if bests:
            spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
            mean = statistics.mean(bests)
            print(f"{mode}: mean best {mean:.2f} +- {spread:.2f} (n={len(bests)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
