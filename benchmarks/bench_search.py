"""Does the search pay? TPE + ASHA against random + ASHA and the full grid (issue 12).

Usage:
    .venv/bin/python benchmarks/bench_search.py [--datasets synthetic camvid]
        [--seeds 0 1 2] [--out benchmarks/search] [--quick]

One discretised space (every marker a ``grid``: the aux head's CE weight in {off, 0.2, 0.4,
0.8} and the decode head's Lovasz weight in {off, 0.5, 1.0}, beside CE 1.0) is searched
three ways with the same number of epochs per trial:

- ``tpe``: ``search.sampler: tpe`` (grid markers sampled as choices) with ASHA,
- ``random``: ``search.sampler: random`` with ASHA,
- ``grid``: every point once (Optuna's GridSampler), FIFO, every trial trains all epochs.

The samplers draw as many trials as the grid has points and run once per search seed
(``search.seed``); the grid runs once. Early stopping is off and one trial runs at a time
(``max_concurrent: 1``), so "epochs spent" counts the same thing for every way and each
sampler has seen every earlier trial when it proposes. Each search is the search command's
own entry (``tune_losses.tune.cli.main``, as ``python -m tune_losses.search`` runs it) called
in this process, which keeps one local Ray instance for all of them instead of starting one
a search; each has its own Ray storage, sqlite MLflow store and log under
``--out/<dataset>/<way>-seed<seed>/``. A search whose ``summary.json`` is there is not run
again (resumable), an unfinished one is started afresh.

What is compared is read back from the MLflow store: every reported epoch of every trial
(``val/mIoU``, in %), in the order they happened (report timestamp, then trial start, then
epoch). From it: the best val mIoU a way reached; the epochs spent until its best-so-far
came within ``--tolerance`` (0.5) mIoU of the grid's best; that as a fraction of the grid's
epochs (target: TPE + ASHA <= 30 %). A plot of best-so-far val mIoU against epochs spent
per dataset goes to ``--out/search_<dataset>.png``; ``--out/results.json`` holds every
figure and a markdown table for ``benchmarks/RESULTS.md`` is printed.

``--quick`` (CI): synthetic only, a 2 x 2 grid, 2 epochs, seed 0, a tiny model.
``camvid`` is ``configs/camvid_small.yaml`` (CamVid at scale 0.5) reduced to
``--camvid-train`` training and ``--camvid-val`` validation images and ``--camvid-epochs``
epochs, since the full grid at the full set does not fit a small CPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tiny import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench_search"
WAYS = ("tpe", "random", "grid")
CURVE = "val/mIoU"
SUMMARY = "summary.json"

LOVASZ = {"classes": "all", "per_image": True}
OFF = None  # a null option switches the term off (a head left with no term is off)
# every marker a grid, with labels that read in the leaderboard and in MLflow params
FULL_LOSS = {
    "decode": {
        "ce": {"weight": 1.0},
        "lovasz": {
            "grid": {"off": OFF, "w05": {"weight": 0.5, **LOVASZ}, "w10": {"weight": 1.0, **LOVASZ}}
        },
    },
    "aux": {
        "ce": {
            "grid": {
                "off": OFF,
                "w02": {"weight": 0.2},
                "w04": {"weight": 0.4},
                "w08": {"weight": 0.8},
            }
        }
    },
}
QUICK_LOSS = {
    "decode": {
        "ce": {"weight": 1.0},
        "lovasz": {"grid": {"off": OFF, "w05": {"weight": 0.5, **LOVASZ}}},
    },
    "aux": {"ce": {"grid": {"off": OFF, "w04": {"weight": 0.4}}}},
}
SMALL_MODEL = {
    "arch": "Unet",
    "encoder": "tu-mobilenetv3_small_050",
    "kwargs": {"decoder_channels": [64, 32, 16, 16, 8]},
    "aux_channels": 32,
}


@dataclass
class Setting:
    """One dataset's benchmark: the space (without ``search``) and the ASHA settings."""

    name: str
    space: dict[str, Any]
    grace_period: int
    points: int

    @property
    def epochs(self) -> int:
        return int(self.space["train"]["epochs"])


def synthetic(quick: bool) -> Setting:
    """The embedded synthetic set: quickstart's model at 48 px, or a tiny one (``--quick``)."""
    if quick:
        space = tiny_experiment(train={"epochs": 2, "lr": 0.005}, loss=QUICK_LOSS)
        return Setting("synthetic", space, grace_period=1, points=4)
    data = {"num_train": 64, "num_val": 32, "size": 48, "num_classes": 5}
    space = {
        "data": {"format": "synthetic", "synthetic": data, "batch_size": 8},
        "model": SMALL_MODEL,
        "train": {"epochs": 6, "lr": 0.01},
        "loss": FULL_LOSS,
    }
    return Setting("synthetic", space, grace_period=2, points=12)


def camvid(args: argparse.Namespace) -> Setting:
    """``configs/camvid_small.yaml``'s data, model and train blocks on a subset of CamVid."""
    base = yaml.safe_load((ROOT / "configs" / "camvid_small.yaml").read_text())
    space = {key: copy.deepcopy(base[key]) for key in ("data", "model", "train")}
    space["data"]["root"] = str((ROOT / base["data"]["root"]).resolve())
    space["data"].update(max_train=args.camvid_train, max_val=args.camvid_val)
    space["train"]["epochs"] = args.camvid_epochs
    space["loss"] = FULL_LOSS
    return Setting("camvid", space, grace_period=min(2, args.camvid_epochs), points=12)


def space_file(setting: Setting, way: str) -> dict[str, Any]:
    """The space of one way: the same markers; sampler, scheduler and trials differ."""
    space = copy.deepcopy(setting.space)
    space["train"].update(threads=1, early_stopping={"patience": None})
    search: dict[str, Any] = {"max_concurrent": 1, "cpus_per_trial": 1}
    if way == "grid":
        search["scheduler"] = "fifo"
    else:
        search.update(
            sampler=way,
            scheduler="asha",
            num_samples=setting.points,
            grace_period=setting.grace_period,
            reduction_factor=2,
        )
    space["search"] = search
    return space


def run_search(setting: Setting, way: str, seed: int, out: Path) -> dict[str, Any]:
    """Run one search (unless its summary is stored) and return its summary."""
    run = out / setting.name / f"{way}-seed{seed}"
    if (run / SUMMARY).is_file():
        print(f"{run}: done before, read back", flush=True)
        return json.loads((run / SUMMARY).read_text())
    shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts afresh
    run.mkdir(parents=True)
    space = run / "space.yaml"
    space.write_text(yaml.safe_dump(space_file(setting, way), sort_keys=False))
    argv = ["--space", str(space), "--seed", str(seed), "--storage", str(run / "ray")]
    argv += ["--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{run / 'mlruns.db'}"]
    start = time.perf_counter()
    code = _search_in_process(argv, run / "search.log")
    if code != 0:
        raise RuntimeError(f"{way} seed {seed} exited {code}: see {run}/search.log")
    summary = {"way": way, "seed": seed, **read_events(run)}
    summary["minutes"] = round((time.perf_counter() - start) / 60, 2)
    (run / SUMMARY).write_text(json.dumps(summary))
    print(f"{run}: {summary['trials']} trials, {len(summary['values'])} epochs", flush=True)
    return summary


def _search_in_process(argv: list[str], log: Path) -> int:
    """``python -m tune_losses.search ARGV`` in this process, its output into ``log``.

    Ray's workers start from the environment of the first search's ``ray.init``: PYTHONPATH
    names this checkout so that they import the same ``tune_losses`` as this process."""
    from tune_losses.tune import cli

    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    with log.open("w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        return cli.main(argv)


def read_events(run: Path) -> dict[str, Any]:
    """Every reported ``val/mIoU`` of the search stored in ``run``, in the order reported.

    Returns ``trials`` (child runs), ``values`` (one per epoch trained, in order) and
    ``epochs_run`` (the children's ``epochs_run`` tags summed, a cross-check of ``values``).
    Ray's report timestamps are whole seconds: ties go by trial start, then by epoch.
    """
    from tune_losses import tracking

    client = tracking.open_client(f"sqlite:///{run / 'mlruns.db'}")
    parent = tracking.find_parent(client, EXPERIMENT)
    query = f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'"
    children = tracking.search_all(client, parent.info.experiment_id, query)
    events: list[tuple[int, int, int, float]] = []
    for child in children:
        by_step = {}
        for m in sorted(client.get_metric_history(child.info.run_id, CURVE), key=_ts):
            by_step[int(m.step)] = (int(m.timestamp), float(m.value))
        start = int(child.info.start_time)
        events += [(ts, start, step, value) for step, (ts, value) in by_step.items()]
    events.sort()
    epochs_run = sum(int(c.data.tags.get(tracking.EPOCHS_TAG, 0)) for c in children)
    return {"trials": len(children), "values": [e[3] for e in events], "epochs_run": epochs_run}


def _ts(metric: Any) -> int:
    return int(metric.timestamp)


def best_so_far(values: list[float]) -> list[float]:
    """The running maximum of ``values`` (NaN epochs, such as a failed one, skipped)."""
    curve, best = [], -math.inf
    for v in values:
        best = max(best, v) if math.isfinite(v) else best
        curve.append(best)
    return curve


def epochs_to(values: list[float], target: float) -> int | None:
    """Epochs spent until the best-so-far first reaches ``target`` (None: never)."""
    for i, best in enumerate(best_so_far(values), start=1):
        if best >= target:
            return i
    return None


def score(summaries: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One row per search: best, epochs spent, epochs to within ``tolerance`` of the grid's
    best and that as a fraction of the grid's epochs."""
    grid = next(s for s in summaries if s["way"] == "grid")
    grid_best = max(best_so_far(grid["values"]))
    grid_epochs = len(grid["values"])
    rows = []
    for s in summaries:
        reach = epochs_to(s["values"], grid_best - tolerance)
        rows.append(
            {
                "way": s["way"],
                "seed": s["seed"],
                "trials": s["trials"],
                "epochs_spent": len(s["values"]),
                "epochs_run_tags": s["epochs_run"],
                "best": max(best_so_far(s["values"])),
                "epochs_to_target": reach,
                "fraction_of_grid": None if reach is None else reach / grid_epochs,
                "minutes": s["minutes"],
            }
        )
    return rows


def plot(name: str, summaries: list[dict[str, Any]], target: float, path: Path) -> None:
    """Best-so-far val mIoU against epochs spent, one line per search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"tpe": "tab:blue", "random": "tab:orange", "grid": "black"}
    labels = {"tpe": "TPE + ASHA", "random": "random + ASHA", "grid": "grid, FIFO"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for s in summaries:
        curve = best_so_far(s["values"])
        label = None if s["way"] in seen else labels[s["way"]]
        seen.add(s["way"])
        width = 2.0 if s["way"] == "grid" else 1.2
        steps = range(1, len(curve) + 1)
        ax.step(steps, curve, where="post", color=colours[s["way"]], lw=width, label=label)
    ax.axhline(target, color="grey", ls="--", lw=1, label="grid best - tolerance")
    ax.set_xlabel("epochs spent (all trials, in order)")
    ax.set_ylabel("best-so-far val mIoU (%)")
    ax.set_title(f"{name}: does the search pay?")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(name: str, setting: Setting, rows: list[dict[str, Any]], tolerance: float) -> str:
    """The markdown table of one dataset: a row per search, then the mean per way."""
    grid = next(r for r in rows if r["way"] == "grid")
    lines = [
        f"### {name}: {setting.points} grid points x {setting.epochs} epochs "
        f"(grid best {grid['best']:.2f}, target >= {grid['best'] - tolerance:.2f})",
        "",
        "| way | seed | trials | epochs spent | best val mIoU | epochs to target "
        "| fraction of grid epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["way"], r["seed"], r["trials"], r["epochs_spent"], f"{r['best']:.2f}"]
        cells += [_cell(r["epochs_to_target"]), _cell(r["fraction_of_grid"], "{:.0%}")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        bests = [r["best"] for r in mine]
        fractions = [r["fraction_of_grid"] for r in mine]
        reached = [f for f in fractions if f is not None]
        spread = f" +- {statistics.stdev(bests):.2f}" if len(bests) > 1 else ""
        text = f"- {way}: best {statistics.mean(bests):.2f}{spread} (n={len(mine)}); "
        text += f"reached the target in {len(reached)}/{len(mine)}"
        if reached:
            text += f", median fraction {statistics.median(reached):.0%} of the grid's epochs"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=("synthetic", "camvid"), default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "search")
    p.add_argument("--tolerance", type=float, default=0.5, help="mIoU points below grid best")
    p.add_argument("--quick", action="store_true", help="synthetic, 2x2 grid, 2 epochs, seed 0")
    p.add_argument("--camvid-train", type=int, default=64)
    p.add_argument("--camvid-val", type=int, default=32)
    p.add_argument("--camvid-epochs", type=int, default=4)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: score the searches already finished in --out",
    )
    args = p.parse_args(argv)
    datasets = args.datasets or (["synthetic"] if args.quick else ["synthetic", "camvid"])
    seeds = [0] if args.quick else args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Any] = {"quick": args.quick, "tolerance": args.tolerance, "datasets": {}}
    tables = []
    for name in datasets:
        setting = synthetic(args.quick) if name == "synthetic" else camvid(args)
        runs = [("grid", 0)] + [(way, seed) for seed in seeds for way in ("tpe", "random")]
        if args.report_only:
            runs = [
                (w, s) for w, s in runs if (args.out / name / f"{w}-seed{s}" / SUMMARY).is_file()
            ]
        summaries = [run_search(setting, way, seed, args.out) for way, seed in runs]
        rows = score(summaries, args.tolerance)
        grid_best = next(r["best"] for r in rows if r["way"] == "grid")
        png = args.out / f"search_{name}.png"
        plot(name, summaries, grid_best - args.tolerance, png)
        tables.append(table(name, setting, rows, args.tolerance))
        results["datasets"][name] = {
            "setting": asdict(setting),
            "grid_points": setting.points,
            "epochs": setting.epochs,
            "grid_epochs": setting.points * setting.epochs,
            "seeds": seeds,
            "rows": rows,
            "plot": str(png),
        }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n" + "\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
