"""Does the search pay? Ways of searching scored by the truth, not by what they saw (issue 18).

Usage:
    .venv/bin/python benchmarks/bench_search.py [--datasets synthetic camvid]
        [--seeds 0 1 2 3 4] [--truth-seeds 0 1 2] [--ways tpe+ tpe random]
        [--samples N] [--out benchmarks/search] [--quick] [--report-only]

One grid-only space (synthetic: 40 points, Lovasz and Dice each off, constant, decaying,
warming up or switched on at 60 % beside CE with and without class weights) is searched:

- ``grid``: every point once (Optuna's GridSampler), FIFO, once per training seed in
  ``--truth-seeds``: these passes are the truth table (each point's mean over seeds, and its
  standard error);
- ``tpe+``: TPE + ASHA with ``search.repeats: 2`` and schedule-aware stopping (issue 18);
- ``tpe``: TPE + ASHA as round 2 ran it (no repeats, plain ASHA);
- ``random``: random search + ASHA (plain ASHA);

each sampler way drawing ``--samples`` configurations (default a quarter of the grid) once per
sampler seed. Duplicates are never retrained (the product no longer does, in any way). Early
stopping is off and one trial runs at a time, so "epochs spent" counts the same thing for
every way. Each search is the search command's own entry (``tune_losses.tune.cli.main``)
called in this process (one local Ray for all); each has its own Ray storage, sqlite MLflow
store and log under ``--out/<dataset>/<way>-seed<seed>/``; a search whose ``summary.json`` is
there is not run again (resumable).

Scored, per search, from its MLflow store: the configuration it chose (its parent's best
trial) and that configuration's **true** mean, its regret against the grid's best true mean
and whether it lies within one standard error of it, the epochs spent (repeats included) as
a fraction of one grid pass, configurations trained twice at one seed, and runs of a
schedule judged (stopped) before it played. Also, as in round 2: best-so-far val mIoU
against epochs (``--out/search_<dataset>.png``) and the epochs to within ``--tolerance`` of
the grid's best value. ``--out/results.json`` holds every figure; a markdown table is printed.

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
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tiny import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench_search"
WAYS = ("tpe+", "tpe", "random", "grid")
# how each way searches: sampler, search.repeats, search.schedule_aware
HOW = {
    "tpe+": ("tpe", 2, True),  # issue 18: repeats for contenders, schedule-aware stopping
    "tpe": ("tpe", 1, False),  # round 2's TPE + ASHA (duplicates are never retrained now)
    "random": ("random", 1, False),
}
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
# 40 points: Lovasz and Dice each off, constant, decaying, warming up or switched on late
# beside CE with and without class weights (every schedule kind a search can meet)
LATE = {"schedule": "step", "values": [0.0, 0.5], "milestones": [0.6]}
SCHEDULE_LOSS = {
    "decode": {
        "ce": {"weight": 1.0, "class_weights": {"grid": {"none": None, "sqrt": "sqrt_inverse"}}},
        "lovasz": {
            "grid": {
                "off": OFF,
                "const": {"weight": 0.5, **LOVASZ},
                "decay": {"weight": {"schedule": "linear", "start": 1.0, "end": 0.1}, **LOVASZ},
                "late": {"weight": LATE, **LOVASZ},
            }
        },
        "dice": {
            "grid": {
                "off": OFF,
                "const": {"weight": 0.5},
                "decay": {"weight": {"schedule": "linear", "start": 0.8, "end": 0.1}},
                "warmup": {"weight": {"schedule": "warmup", "value": 0.5, "warmup": 0.3}},
                "late": {"weight": LATE},
            }
        },
    },
    "aux": {"ce": {"weight": 0.4}},
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
    data = {"num_train": 32, "num_val": 16, "size": 48, "num_classes": 5}
    space = {
        "data": {"format": "synthetic", "synthetic": data, "batch_size": 8},
        "model": SMALL_MODEL,
        "train": {"epochs": 4, "lr": 0.01},
        "loss": SCHEDULE_LOSS,
    }
    return Setting("synthetic", space, grace_period=1, points=40)


def camvid(args: argparse.Namespace) -> Setting:
    """``configs/camvid_small.yaml``'s data, model and train blocks on a subset of CamVid."""
    base = yaml.safe_load((ROOT / "configs" / "camvid_small.yaml").read_text())
    space = {key: copy.deepcopy(base[key]) for key in ("data", "model", "train")}
    space["data"]["root"] = str((ROOT / base["data"]["root"]).resolve())
    space["data"].update(max_train=args.camvid_train, max_val=args.camvid_val)
    space["train"]["epochs"] = args.camvid_epochs
    space["loss"] = FULL_LOSS
    return Setting("camvid", space, grace_period=min(2, args.camvid_epochs), points=12)


def space_file(setting: Setting, way: str, seed: int, samples: int) -> dict[str, Any]:
    """The space of one way: the same markers; sampler, scheduler and trials differ. The
    grid runs every point at training seed ``seed`` (its passes are the truth table); the
    samplers draw ``samples`` configurations at training seed 0."""
    space = copy.deepcopy(setting.space)
    space["train"].update(threads=1, early_stopping={"patience": None})
    search: dict[str, Any] = {"max_concurrent": 1, "cpus_per_trial": 1}
    if way == "grid":
        search["scheduler"] = "fifo"
        space["train"]["seed"] = seed
    else:
        sampler, repeats, aware = HOW[way]
        search.update(
            sampler=sampler,
            scheduler="asha",
            num_samples=samples,
            grace_period=setting.grace_period,
            reduction_factor=2,
            repeats=repeats,
            schedule_aware=aware,
        )
    space["search"] = search
    return space


def run_search(setting: Setting, way: str, seed: int, out: Path, samples: int) -> dict[str, Any]:
    """Run one search (unless its summary is stored) and return its summary."""
    run = out / setting.name / f"{way}-seed{seed}"
    if (run / SUMMARY).is_file():
        print(f"{run}: done before, read back", flush=True)
        return json.loads((run / SUMMARY).read_text())
    shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts afresh
    run.mkdir(parents=True)
    space = run / "space.yaml"
    space.write_text(yaml.safe_dump(space_file(setting, way, seed, samples), sort_keys=False))
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
        with _console_logging_to(fh):
            return cli.main(argv)


@contextlib.contextmanager
def _console_logging_to(fh: Any) -> Iterator[None]:
    """Point the logging handlers that write to the console at ``fh`` for one search.

    Ray's and Optuna's handlers (and Optuna's colour formatter) keep the ``sys.stderr`` of
    their creation, the first search's log: without this, later searches' messages went to
    that closed file (a traceback each) instead of their own log."""
    for handler in _stream_handlers():
        stream = handler.stream
        if stream in (sys.__stdout__, sys.__stderr__) or getattr(stream, "closed", False):
            _point(handler, fh)
    try:
        yield
    finally:
        for handler in _stream_handlers():
            if handler.stream is fh:
                _point(handler, sys.__stderr__)


def _point(handler: logging.StreamHandler, stream: Any) -> None:
    if getattr(handler.stream, "closed", False):
        handler.stream = stream  # setStream would flush the closed one first
    else:
        handler.setStream(stream)
    if hasattr(handler.formatter, "stream"):  # colorlog asks it whether it is a terminal
        handler.formatter.stream = stream


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every stream handler of every logger, files excluded."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


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
    runs = [
        {
            "trial": c.data.tags.get(tracking.TRIAL_TAG, ""),
            "point": point_of(c.data.params),
            "seed": c.data.params.get("train.seed", ""),
            "epochs": int(c.data.tags.get(tracking.EPOCHS_TAG, 0)),
            "best": c.data.metrics.get("best_val_mIoU", math.nan),
            "repeat_of": c.data.tags.get(tracking.REPEAT_TAG, ""),
            "played": played_from(client, c.info.run_id),
        }
        for c in children
    ]
    best = parent.data.tags.get("best_trial", "")
    chosen = next((r["point"] for r in runs if r["trial"] == best), None)
    return {
        "trials": len(children),
        "values": [e[3] for e in events],
        "epochs_run": epochs_run,
        "runs": runs,
        "chosen": chosen,
    }


def point_of(params: dict[str, str]) -> str:
    """A grid point's name from a child's params: each marker's label, whether the marker
    was a ``grid`` (the grid way) or sampled as a ``choice`` (the samplers)."""
    labels = {
        k.rsplit(".", 1)[0]: v
        for k, v in params.items()
        if k.startswith("loss.") and k.endswith((".grid", ".choice"))
    }
    return " ".join(f"{k.removeprefix('loss.')}={v}" for k, v in sorted(labels.items()))


def played_from(client: Any, run_id: str) -> int:
    """The first epoch a run may be judged at (its schedules played), from the concrete
    experiment it ran (its ``trial_config.yaml``)."""
    import tempfile

    from tune_losses import tracking
    from tune_losses.config import load_experiment
    from tune_losses.losses.spec import settles_at
    from tune_losses.schedules import played_epoch

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, tracking.TRIAL_CONFIG, tmp)
        exp = load_experiment(path)
    return played_epoch(settles_at(exp.loss), exp.train.epochs)


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


def truth_table(summaries: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each grid point's final best val mIoU at every training seed the grid ran (one grid
    pass a seed): their mean (the truth) and standard error."""
    seen: dict[str, list[float]] = {}
    for s in summaries:
        if s["way"] == "grid":
            for run in s["runs"]:
                seen.setdefault(run["point"], []).append(run["best"])
    table = {}
    for point, values in seen.items():
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        table[point] = {"mean": statistics.fmean(values), "se": se, "n": len(values)}
    return table


def judged(summary: dict[str, Any], truth: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A search scored by the truth, not by what it saw: the true mean of the configuration
    it chose, its regret against the grid's best true mean (and whether within that point's
    standard error), configurations trained twice at one seed, and runs of a schedule
    stopped before it played."""
    best_point = max(truth, key=lambda p: truth[p]["mean"])
    chosen = truth.get(summary.get("chosen") or "", {"mean": math.nan})
    regret = truth[best_point]["mean"] - chosen["mean"]
    trained = [(r["point"], r["seed"]) for r in summary["runs"]]
    unplayed = [r for r in summary["runs"] if 0 < r["epochs"] < r["played"]]
    return {
        "chosen": summary.get("chosen"),
        "chosen_true_mean": chosen["mean"],
        "regret": regret,
        "within_se": bool(regret <= truth[best_point]["se"]),
        "retrained": len(trained) - len(set(trained)),
        "judged_unplayed": len(unplayed),
        "repeats": sum(bool(r["repeat_of"]) for r in summary["runs"]),
    }


def score(summaries: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One row per search: best, epochs spent, epochs to within ``tolerance`` of the grid's
    best and that as a fraction of the grid's epochs; with a truth table (the grid at every
    training seed), what the chosen configuration is really worth (:func:`judged`)."""
    truth = truth_table(summaries)
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
                "budget_fraction": len(s["values"]) / grid_epochs,
                "minutes": s["minutes"],
                **(judged(s, truth) if s["way"] != "grid" else {}),
            }
        )
    return rows


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Median, min and max over curves at each step; a finished curve keeps its last value
    (a search that has ended keeps its final best)."""
    length = max(len(c) for c in curves)
    full = [c + [c[-1]] * (length - len(c)) for c in curves]
    columns = list(zip(*full, strict=True))
    return [statistics.median(v) for v in columns], list(map(min, columns)), list(map(max, columns))


def plot(
    name: str,
    summaries: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    target: float,
    path: Path,
) -> None:
    """Left: best-so-far val mIoU (what each search saw) against epochs spent, the median
    over seeds with a band from the lowest to the highest seed. Right: the true regret of
    each search's chosen configuration against the budget it spent, one dot a seed, the
    median with its range (dots nudged 0.3 sideways by way, so that equal ones show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"tpe+": "tab:green", "tpe": "tab:blue", "random": "tab:orange", "grid": "black"}
    labels = {
        "tpe+": "TPE + ASHA, repeats, schedule-aware",
        "tpe": "TPE + ASHA",
        "random": "random + ASHA",
        "grid": "grid, FIFO",
    }
    fig, (seen_ax, regret_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for way in WAYS:
        curves = [best_so_far(s["values"]) for s in summaries if s["way"] == way and s["values"]]
        if not curves:
            continue
        median, low, high = _band(curves)
        steps = range(1, len(median) + 1)
        label = f"{labels[way]} (n={len(curves)})"
        seen_ax.step(steps, median, where="post", color=colours[way], lw=1.8, label=label)
        seen_ax.fill_between(steps, low, high, step="post", color=colours[way], alpha=0.15)
    seen_ax.axhline(target, color="grey", ls="--", lw=1, label="grid best - tolerance")
    seen_ax.set_xlabel("epochs spent (all trials, in order)")
    seen_ax.set_ylabel("best-so-far val mIoU (%), as the search saw it")
    seen_ax.set_title(f"{name}: what each way saw (median, band = seed range)")
    seen_ax.legend(loc="lower right", fontsize=8)
    for i, way in enumerate(w for w in WAYS if w != "grid"):
        mine = [r for r in rows if r["way"] == way and "regret" in r]
        if not mine:
            continue
        budget = [100 * r["budget_fraction"] for r in mine]
        regret = [r["regret"] for r in mine]
        jitter = [b + 0.3 * (i - 1) for b in budget]
        regret_ax.scatter(jitter, regret, color=colours[way], s=18, alpha=0.6)
        mb, mr = statistics.median(budget), statistics.median(regret)
        regret_ax.errorbar(
            mb,
            mr,
            xerr=[[mb - min(budget)], [max(budget) - mb]],
            yerr=[[mr - min(regret)], [max(regret) - mr]],
            color=colours[way],
            marker="D",
            ms=8,
            capsize=3,
            label=f"{labels[way]}: median {mr:.2f}",
        )
    regret_ax.set_xlabel("budget spent (% of one grid pass's epochs, repeats included)")
    regret_ax.set_ylabel("regret of the chosen configuration (true mIoU points)")
    regret_ax.set_title("scored by the truth (grid at 3 seeds): lower is better")
    regret_ax.legend(loc="upper left", fontsize=8)
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
    truth_rows = [r for r in rows if "regret" in r]
    if truth_rows:
        lines += [
            "",
            "Scored by the truth (each grid point's mean over the grid's training seeds):",
            "",
            "| way | seed | chosen | its true mean | regret | within 1 se | budget (grid pass) "
            "| repeats | retrained | judged before played |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in truth_rows:
            cells = [r["way"], r["seed"], r["chosen"], f"{r['chosen_true_mean']:.2f}"]
            cells += [f"{r['regret']:.2f}", "yes" if r["within_se"] else "no"]
            cells += [f"{r['budget_fraction']:.0%}", r["repeats"], r["retrained"]]
            cells += [r["judged_unplayed"]]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
        for way in WAYS:
            mine = [r for r in truth_rows if r["way"] == way]
            if mine:
                regrets = sorted(r["regret"] for r in mine)
                budgets = [r["budget_fraction"] for r in mine]
                within = sum(r["within_se"] for r in mine)
                lines.append(
                    f"- {way}: regret median {statistics.median(regrets):.2f} (range "
                    f"{regrets[0]:.2f}..{regrets[-1]:.2f}, n={len(mine)}), within one se of the "
                    f"best in {within}/{len(mine)}, budget median "
                    f"{statistics.median(budgets):.0%} of a grid pass"
                )
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        if not mine:
            continue
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds")
    p.add_argument(
        "--truth-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds of the grid passes (the truth table)",
    )
    p.add_argument("--ways", nargs="+", choices=WAYS[:-1], default=list(WAYS[:-1]))
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="configurations a sampler draws (default: 25%% of the grid)",
    )
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
        truth_seeds = [0] if args.quick else args.truth_seeds
        samples = args.samples or (setting.points if args.quick else math.ceil(setting.points / 4))
        runs = [("grid", s) for s in truth_seeds]
        runs += [(way, seed) for seed in seeds for way in args.ways]
        if args.report_only:
            runs = [
                (w, s) for w, s in runs if (args.out / name / f"{w}-seed{s}" / SUMMARY).is_file()
            ]
        summaries = [run_search(setting, way, seed, args.out, samples) for way, seed in runs]
        rows = score(summaries, args.tolerance)
        grid_best = next(r["best"] for r in rows if r["way"] == "grid")
        results_truth = truth_table(summaries)
        png = args.out / f"search_{name}.png"
        plot(name, summaries, rows, grid_best - args.tolerance, png)
        tables.append(table(name, setting, rows, args.tolerance))
        results["datasets"][name] = {
            "setting": asdict(setting),
            "grid_points": setting.points,
            "epochs": setting.epochs,
            "grid_epochs": setting.points * setting.epochs,
            "seeds": seeds,
            "truth_seeds": truth_seeds,
            "samples": samples,
            "truth": results_truth,
            "rows": rows,
            "plot": str(png),
        }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n" + "\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
