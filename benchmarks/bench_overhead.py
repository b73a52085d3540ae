"""What running a trial inside a search costs over a plain training run (issue 12).

Usage:
    .venv/bin/python benchmarks/bench_overhead.py [--quick] [--concurrency 1 2 4]
        [--repeats 1] [--epochs 12] [--out benchmarks/overhead]

One fixed experiment (the quickstart's model and synthetic data, a CE + Dice / CE +
Lovasz mix, no search markers) is written to ``<out>/config.yaml`` and trained two ways,
each in a fresh child process (``--one plain|search``) so that imports and Ray start cold:

- plain: ``python -m tune_losses.train --config config.yaml`` (its ``main``), torch
  threads set by ``train.threads``;
- search: ``python -m tune_losses.search --space config.yaml`` (its ``main``) with FIFO,
  ``k`` identical trials ``k`` at a time and ``cpus_per_trial = cpus / k``, MLflow on a
  scratch sqlite store in the run's folder (created before the runs, as a search into an
  existing store finds it), a checkpoint every epoch as every search writes; the child
  exits as ``python -m tune_losses.search`` does.

For each ``k`` in ``--concurrency`` the plain run uses the same thread count as one trial
(``cpus / k``), and the two alternate (plain first on even repeats, search first on odd)
so that a change of load on the machine hits both alike. Measured:

- per-epoch time: the median ``time/epoch_s`` the trainer reports (training + validation,
  epochs after the first when there are three or more), and the median wall time between
  two epochs (the plain run: between two yields of ``Trainer.epochs``; the search: between
  two results reaching the driver's callback, so checkpoint and report included);
- checkpoint time: the trial's ``time/checkpoint_s`` (``Trainer.save`` into the checkpoint
  folder);
- the search's phases, from timestamps the child takes around the functions it calls
  (wrapped in the child only): interpreter start + imports, preflight, MLflow parent run,
  ``ray.init``, Tuner built, first trial started, first result, last result, end of
  ``tuner.fit()``, summary (leaderboard, report), ``ray.shutdown``, process exit;
- fixed cost: each side's wall minus the sum of its (first trial's) ``time/epoch_s``.

Times are wall-clock seconds on whatever else the machine runs: read the ratios, which
come from runs side by side. The 1-minute load average is printed at the start and the
end. ``--quick`` (CI) trains a tiny set for 3 epochs at ``k = 1`` once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tiny import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
FULL_DATA = {"num_train": 128, "num_val": 32, "size": 64, "num_classes": 5}
LOSS = {
    "decode": {"ce": {"weight": 1.0}, "dice": {"weight": 0.5}},
    "aux": {"ce": {"weight": 0.4}, "lovasz": {"weight": 0.3, "classes": "all"}},
}
STORE = "mlruns.db"  # one scratch MLflow store per benchmark run, created before the runs
PHASES = (
    "imports",
    "preflight",
    "mlflow_parent",
    "ray_init",
    "tuner_built",
    "actor_requested",
    "trial_started",
    "first_result",
    "last_result",
    "fit_end",
    "summary",
    "ray_shutdown",
    "exit",
)


def experiment(epochs: int, quick: bool) -> dict[str, Any]:
    """The fixed experiment both ways train: quickstart's model on synthetic data, or the
    tiny experiment (``--quick``)."""
    search = {"scheduler": "fifo", "num_samples": 1, "max_concurrent": 1}
    train = {"epochs": epochs, "lr": 0.01}
    if quick:
        return tiny_experiment(train=train, search=search, loss=LOSS)
    return {
        "data": {"format": "synthetic", "synthetic": FULL_DATA, "batch_size": 8},
        "model": {
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_050",
            "kwargs": {"decoder_channels": [64, 32, 16, 16, 8]},
            "aux_channels": 32,
        },
        "train": train,
        "search": search,
        "loss": LOSS,
    }


# --------------------------------------------------------------------------- child side


def _wrap(owner: Any, name: str, before: Callable[[], None] | None, after: Callable[[], None]):
    """Replace ``owner.name`` by a wrapper calling ``before``/``after`` around it."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before()
        try:
            return original(*args, **kwargs)
        finally:
            after()

    setattr(owner, name, wrapper)


def one_plain(config: Path, out: Path, marks: dict[str, Any]) -> int:
    """``tune_losses.train.main`` on ``config``, timestamps of its epochs in ``marks``."""
    from tune_losses import engine, train

    marks["imports"] = time.time()
    epochs = engine.Trainer.epochs
    marks["epoch_walls"] = []
    marks["epoch_s"] = []

    def timed_epochs(self: engine.Trainer) -> Iterator[dict[str, float]]:
        marks["trainer_built"] = time.time()
        for result in epochs(self):
            marks["epoch_walls"].append(time.time())
            marks["epoch_s"].append(result["time/epoch_s"])
            yield result

    engine.Trainer.epochs = timed_epochs  # type: ignore[method-assign]
    return train.main(["--config", str(config), "--out", str(out / "train")])


def one_search(config: Path, out: Path, marks: dict[str, Any], k: int, cpus: float) -> int:
    """``tune_losses.search``'s ``main`` on ``config`` (``k`` trials), phase timestamps in
    ``marks`` taken by wrapping the functions it calls."""
    from tune_losses.tune import callback, cli, tuner

    try:  # the search's steps, in tune/cli.py before tune/run.py held them
        from tune_losses.tune import run as steps
    except ImportError:
        steps = cli
    marks["imports"] = time.time()
    import ray
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    def mark(key: str) -> Callable[[], None]:
        return lambda: marks.setdefault(key, time.time())

    _wrap(cli, "preflight", None, mark("preflight"))
    _wrap(steps, "_open_parent", None, mark("mlflow_parent"))
    _wrap(ray, "init", None, mark("ray_init"))
    _wrap(tuner, "new_tuner", None, mark("tuner_built"))
    _wrap(tune.Tuner, "fit", None, mark("fit_end"))
    _wrap(steps, "summarize", None, mark("summary"))
    _wrap(callback.TrialLogger, "on_trial_start", mark("trial_started"), lambda: None)
    _wrap(TuneController, "_schedule_trial_actor", mark("actor_requested"), lambda: None)
    results: list[dict[str, Any]] = []
    on_result = callback.TrialLogger.on_trial_result

    def timed_result(self: Any, iteration: int, trials: Any, trial: Any, result: dict, **info: Any):
        results.append(
            {
                "trial": trial.trial_id,
                "at": time.time(),
                "epoch_s": result.get("time/epoch_s"),
                "checkpoint_s": result.get("time/checkpoint_s"),
                "time_total_s": result.get("time_total_s"),
            }
        )
        return on_result(self, iteration, trials, trial, result, **info)

    callback.TrialLogger.on_trial_result = timed_result  # type: ignore[method-assign]
    marks["results"] = results
    return cli.main(
        [
            "--space",
            str(config),
            "--storage",
            str(out / "ray"),
            "--tracking-uri",
            f"sqlite:///{out.parent / STORE}",
            "--experiment",
            "overhead",
            "--num-samples",
            str(k),
            "--cpus-per-trial",
            f"{cpus:g}",
            "--set",
            f"search.max_concurrent={k}",
        ]
    )


def child(argv: list[str]) -> int:
    """Child mode: ``--one MODE CONFIG OUT K CPUS``; writes ``OUT/marks.json`` and exits
    as ``python -m tune_losses.train`` or ``python -m tune_losses.search`` would."""
    mode, config, out, k, cpus = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4])
    marks: dict[str, Any] = {"start": time.time()}
    if mode == "plain":
        code = one_plain(config, out, marks)
        marks["main_end"] = time.time()
        (out / "marks.json").write_text(json.dumps(marks))
        return code
    code = one_search(config, out, marks, k, cpus)
    marks["main_end"] = time.time()
    import ray

    from tune_losses.tune import cli

    ray.shutdown()  # what the exit would do first: timed on its own
    marks["ray_shutdown"] = time.time()
    (out / "marks.json").write_text(json.dumps(marks))
    if hasattr(cli, "exit_now"):
        cli.exit_now(code)
    return code


# --------------------------------------------------------------------------- parent side


def _median_epoch(values: list[float]) -> float:
    """Median of per-epoch values, leaving out the first epoch when three or more ran."""
    values = [v for v in values if v is not None]
    return statistics.median(values[1:] if len(values) >= 3 else values)


def _gaps(times: list[float], start: float) -> list[float]:
    stamps = [start, *times]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def run_one(
    mode: str, exp: dict[str, Any], out: Path, k: int, threads: int, code: Path = ROOT
) -> dict[str, Any]:
    """One child run of the package at ``code``; its phases (seconds from launch) and
    per-epoch figures."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    exp = json.loads(json.dumps(exp))
    if mode == "plain":
        exp["train"]["threads"] = threads
    config.write_text(yaml.safe_dump(exp, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
    command = [sys.executable, __file__, "--one", mode, str(config), str(out), str(k), str(threads)]
    launched = time.time()
    with open(out / "log.txt", "w") as log:
        code = subprocess.run(
            command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    ended = time.time()
    if code != 0:
        raise RuntimeError(f"{mode} run failed (exit {code}); see {out / 'log.txt'}")
    marks = json.loads((out / "marks.json").read_text())
    row: dict[str, Any] = {"mode": mode, "k": k, "threads": threads, "wall_s": ended - launched}
    row["start_s"] = marks["start"] - launched
    row["imports_s"] = marks["imports"] - launched
    row["exit_s"] = ended - marks["main_end"]
    if mode == "plain":
        walls = marks["epoch_walls"]
        row["epoch_s"] = _median_epoch(marks["epoch_s"])
        row["epoch_wall_s"] = (
            _median_epoch(_gaps(walls[1:], walls[0])) if len(walls) > 1 else row["epoch_s"]
        )
        row["build_s"] = marks["trainer_built"] - marks["imports"]
        row["fixed_s"] = row["wall_s"] - sum(marks["epoch_s"])
        return row
    results = marks["results"]
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_trial.setdefault(r["trial"], []).append(r)
    row["phases"] = {p: marks[p] - launched for p in PHASES if p in marks}
    row["phases"]["first_result"] = min(r["at"] for r in results) - launched
    row["phases"]["last_result"] = max(r["at"] for r in results) - launched
    row["phases"]["exit"] = row["wall_s"]
    row["epoch_s"] = statistics.median(
        _median_epoch([r["epoch_s"] for r in rs]) for rs in by_trial.values()
    )
    walls = [
        _median_epoch(_gaps([r["at"] for r in rs[1:]], rs[0]["at"]))
        for rs in by_trial.values()
        if len(rs) > 1
    ]
    row["epoch_wall_s"] = statistics.median(walls) if walls else row["epoch_s"]
    saves = [r["checkpoint_s"] for r in results if r["checkpoint_s"] is not None]
    row["checkpoint_s"] = statistics.median(saves) if saves else math.nan
    row["fixed_s"] = row["wall_s"] - sum(r["epoch_s"] for r in by_trial[min(by_trial)])
    return row


def summarize(rows: list[dict[str, Any]], cpus: int) -> dict[str, Any]:
    """The figures of the table: per ``k``, medians over repeats of each side."""

    def med(mode: str, k: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["mode"] == mode and r["k"] == k)

    levels = sorted({r["k"] for r in rows})
    out: dict[str, Any] = {"cpus": cpus, "levels": {}}
    for k in levels:
        plain_epoch, trial_epoch = med("plain", k, "epoch_s"), med("search", k, "epoch_s")
        plain_wall, trial_wall = med("plain", k, "epoch_wall_s"), med("search", k, "epoch_wall_s")
        out["levels"][str(k)] = {
            "threads": cpus // k,
            "plain_epoch_s": plain_epoch,
            "trial_epoch_s": trial_epoch,
            "epoch_ratio": trial_epoch / plain_epoch,
            "plain_epoch_wall_s": plain_wall,
            "trial_epoch_wall_s": trial_wall,
            "epoch_wall_ratio": trial_wall / plain_wall,
            "checkpoint_s": med("search", k, "checkpoint_s"),
            "plain_wall_s": med("plain", k, "wall_s"),
            "search_wall_s": med("search", k, "wall_s"),
        }
    one = [r for r in rows if r["mode"] == "search" and r["k"] == levels[0]]
    phases = {p: statistics.median(r["phases"][p] for r in one) for p in PHASES}
    out["search_phases_s"] = {
        p: phases[p] - (phases[PHASES[i - 1]] if i else 0.0) for i, p in enumerate(PHASES)
    }
    out["plain_fixed_s"] = med("plain", levels[0], "fixed_s")
    out["search_fixed_s"] = med("search", levels[0], "fixed_s")
    return out


def table(summary: dict[str, Any]) -> str:
    """The markdown tables of ``summary`` (for ``benchmarks/RESULTS.md``)."""
    lines = [
        "| trials at once | threads each | epoch s plain | epoch s trial | trial / plain "
        "| wall/epoch plain | wall/epoch trial | trial / plain | checkpoint s "
        "| total plain s | total search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in summary["levels"].items():
        lines.append(
            f"| {k} | {v['threads']} | {v['plain_epoch_s']:.2f} | {v['trial_epoch_s']:.2f} "
            f"| {v['epoch_ratio']:.3f} | {v['plain_epoch_wall_s']:.2f} "
            f"| {v['trial_epoch_wall_s']:.2f} | {v['epoch_wall_ratio']:.3f} "
            f"| {v['checkpoint_s']:.3f} | {v['plain_wall_s']:.1f} | {v['search_wall_s']:.1f} |"
        )
    lines += ["", "| phase of a 1-trial search (ends when ...) | s |", "|---|---|"]
    for phase, seconds in summary["search_phases_s"].items():
        lines.append(f"| {phase} | {seconds:.2f} |")
    lines.append(
        f"\nfixed cost (wall - sum of epoch times): search {summary['search_fixed_s']:.1f} s, "
        f"plain {summary['plain_fixed_s']:.1f} s"
    )
    return "\n".join(lines)


def create_store(path: Path) -> None:
    """Create the scratch MLflow store, so that no timed search pays MLflow's one-time
    table creation (several seconds), which a search into an existing store never does."""
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{path}").search_experiments()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny set, 3 epochs, k=1 once (CI)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of a search")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "overhead")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return child(args.one)
    if args.quick:
        args.concurrency, args.repeats, args.epochs = [1], 1, 3
    args.out = args.out.resolve()
    exp = experiment(args.epochs, args.quick)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    create_store(args.out / stamp / STORE)
    rows = []
    for k in args.concurrency:
        threads = max(1, args.cpus // k)
        for rep in range(args.repeats):
            order = ("plain", "search") if rep % 2 == 0 else ("search", "plain")
            for mode in order:
                folder = args.out / stamp / f"{mode}-k{k}-r{rep}"
                rows.append(run_one(mode, exp, folder, k, threads))
                print(f"{mode} k={k} rep {rep}: {rows[-1]['wall_s']:.1f} s", flush=True)
    summary = summarize(rows, args.cpus)
    load_end = os.getloadavg()[0]
    print(f"load average (1 min) at end: {load_end:.2f}")
    print(table(summary))
    payload = {"summary": summary, "runs": rows, "experiment": exp, "quick": args.quick}
    (args.out / "overhead.json").write_text(json.dumps(payload, indent=1))
    print(f"\nnumbers: {args.out / 'overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
