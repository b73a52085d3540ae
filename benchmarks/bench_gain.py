"""Does a searched loss beat the losses a practitioner picks by hand? (issue 19)

A thin driver of the product's ``search.baselines`` and ``search.confirm``:

Usage:
    .venv/bin/python benchmarks/bench_gain.py                  # CamVid study, resumable, hours
    .venv/bin/python benchmarks/bench_gain.py --stages tpe     # one stage
    .venv/bin/python benchmarks/bench_gain.py --report-only    # tabulate what is done
    .venv/bin/python benchmarks/bench_gain.py --quick --out /tmp/gain   # synthetic, tiny

Stages, each skipped when done and resumed (``--resume``) when its folder holds a started one:

1. ``tpe``: ``python -m tune_losses.search --space SPACE`` (default
   ``search_spaces/camvid_study.yaml``: TPE, repeats, schedule-aware ASHA, four baselines,
   the top 2 and the baselines confirmed at 5 fresh seeds on test), into ``--out/tpe``;
2. ``random``: the same space and settings with ``search.sampler=random`` and no baselines
   (the ``tpe`` stage's confirmed baselines, at the same fresh seeds, are its reference),
   into ``--out/random``;
3. ``fullres``: the ``tpe`` stage's confirmed winner and best baseline trained with
   ``python -m tune_losses.train`` on ``--fullres-config`` at ``--fullres-seeds``, the last
   weights scored on test with ``python -m tune_losses.evaluate``, into ``--out/fullres``.

The report (``gain.md``, ``gain.json``, ``per_class_iou.png``, rewritten after each stage so
that partial results can be committed): every confirmed arm's mean ± sd over seeds of test
mIoU and Boundary IoU and its classes at 0 test IoU; paired gains over the seeds both arms
have, with 95 % t-intervals (``tune_losses.tracking.paired_interval``); the compute of each
part (epochs, wall time).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tiny import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tpe", "random", "fullres")
METRICS = ("mIoU", "boundary_IoU")  # the confirm split's headline metrics, per arm
AUX_CE = {"ce": {"weight": 0.4}}
QUICK_SPACE = {
    **tiny_experiment(),
    "loss": {
        "decode": {
            "ce": {"weight": 1.0},
            "lovasz": {"weight": {"uniform": [0.0, 1.0]}, "classes": "present"},
        },
        "aux": dict(AUX_CE),
    },
    "search": {
        "num_samples": 2,
        "max_concurrent": 2,
        "grace_period": 1,
        "baselines": {"ce": {"decode": {"ce": {"weight": 1.0}}, "aux": dict(AUX_CE)}},
        "confirm": {"top_k": 1, "seeds": 2, "split": "val"},
    },
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], logfile: Path) -> None:
    """Run a CLI of this package from the repository root, its output appended to ``logfile``."""
    log(" ".join(cmd[1:]) + f"  (log: {logfile})")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("a") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {logfile}")


def store(args: argparse.Namespace, stage: str) -> str:
    return f"sqlite:///{args.out / stage / 'mlruns.db'}"


def experiment(args: argparse.Namespace, stage: str) -> str:
    return f"{args.out.name}_{stage}"  # benchmarks/camvid: camvid_tpe, camvid_random


def parent_of(args: argparse.Namespace, stage: str) -> Any:
    """The stage's search parent run, or None before it started."""
    from tune_losses.tracking import TrackingError, find_parent, open_client

    if not (args.out / stage / "mlruns.db").is_file():
        return None
    client = open_client(store(args, stage))
    try:
        return client, find_parent(client, experiment(args, stage))
    except TrackingError:
        return None


def search(args: argparse.Namespace, stage: str) -> None:
    """The ``tpe`` or ``random`` stage: the search with its confirm stage, to its end."""
    found = parent_of(args, stage)
    if found is not None and found[1].info.status == "FINISHED":
        return
    folder = args.out / stage
    cmd = [sys.executable, "-m", "tune_losses.search", "--space", str(args.space)]
    cmd += ["--storage", str(folder / "ray"), "--tracking-uri", store(args, stage)]
    cmd += ["--experiment", experiment(args, stage), "--seed", str(args.search_seed)]
    if stage == "random":
        cmd += ["--set=search.sampler=random", "--set=search.baselines=null"]
    if found is not None:
        cmd.append("--resume")
    run(cmd, folder / "search.log")


def confirm_runs(args: argparse.Namespace, stage: str) -> dict[str, dict[int, dict[str, float]]]:
    """``{arm: {seed: metrics}}`` of the stage's finished confirm runs (``<split>/...``
    names without the split), arms labelled ``<stage> <arm>`` and baselines ``base <name>``."""
    from tune_losses.tracking import CONFIRM_TAG, PARENT_TAG, SEED_TAG, TRIAL_TAG
    from tune_losses.tracking.readers import search_all

    found = parent_of(args, stage)
    if found is None:
        return {}
    client, parent = found
    split = args.split
    query = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'"
    arms: dict[str, dict[int, dict[str, float]]] = {}
    ray: dict[str, dict[str, Any]] | None = None  # Ray's last results, read once if needed
    for child in search_all(client, parent.info.experiment_id, query):
        tags = child.data.tags
        if CONFIRM_TAG not in tags:
            continue
        label = tags[CONFIRM_TAG]
        label = label if label.startswith("base ") else f"{stage} {label}"
        metrics = child.data.metrics
        if f"{split}/mIoU" not in metrics:  # not logged yet: the trial's last result in Ray
            ray = ray if ray is not None else ray_results(args, stage)
            metrics = ray.get(tags.get(TRIAL_TAG, ""), {})
        scores = {
            k.removeprefix(f"{split}/"): v
            for k, v in metrics.items()
            if k[: len(split) + 1] == f"{split}/"
        }
        if scores:
            arms.setdefault(label, {})[int(tags[SEED_TAG])] = scores
    return arms


def ray_results(args: argparse.Namespace, stage: str) -> dict[str, dict[str, Any]]:
    """``{trial_id: last result}`` of the stage's confirm trials, from Ray's trial folders: a
    confirm stage still running (or stopped) logs its scores to MLflow at its end for the
    runs whose own logging missed them (``tune.confirm.log_missing_scores``)."""
    out = {}
    for path in (args.out / stage / "ray").glob("*/confirm/*/result.json"):
        lines = path.read_text().strip().splitlines()
        if lines:
            last = json.loads(lines[-1])
            out[str(last.get("trial_id"))] = last
    return out


def compute(args: argparse.Namespace, stage: str) -> list[dict[str, Any]]:
    """Epochs and wall time of a search's parts: searched trials, baselines, confirm runs."""
    from tune_losses.tracking import BASELINE_TAG, CONFIRM_TAG, EPOCHS_TAG, PARENT_TAG
    from tune_losses.tracking.readers import search_all

    found = parent_of(args, stage)
    if found is None:
        return []
    client, parent = found
    query = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    parts: dict[str, list[Any]] = {}
    for child in search_all(client, parent.info.experiment_id, query):
        tags = child.data.tags
        part = "confirm" if CONFIRM_TAG in tags else "baselines" if tags.get(BASELINE_TAG) else ""
        parts.setdefault(part or "search", []).append(child)
    rows = []
    for part, runs in parts.items():
        ends = [r.info.end_time or r.info.start_time for r in runs]
        rows.append(
            {
                "stage": stage,
                "part": part,
                "runs": len(runs),
                "epochs": sum(int(r.data.tags.get(EPOCHS_TAG) or 0) for r in runs),
                "wall_min": (max(ends) - min(r.info.start_time for r in runs)) / 60000,
            }
        )
    return rows


def search_rows(args: argparse.Namespace, stage: str, top: int = 8) -> list[dict[str, Any]]:
    """What the search saw on val: its leaderboard's first ``top`` configurations and every
    baseline (seed means with ``search.repeats``), as the product ranks them."""
    from tune_losses.tracking import load_trials

    found = parent_of(args, stage)
    if found is None:
        return []
    trials = [t for t in load_trials(*found) if not t.repeat_of]
    shown = [t for t in trials if not t.baseline][:top] + [t for t in trials if t.baseline]
    return [
        {
            "stage": stage,
            "trial": t.name,
            "status": t.status,
            "epochs": t.epochs_run,
            "best": t.best,
            "seeds": [round(v, 2) for v in t.seeds],
        }
        for t in shown
    ]


def winner_losses(args: argparse.Namespace, arms: dict[str, Any]) -> dict[str, Any]:
    """The ``tpe`` stage's confirmed winner and best baseline: their ``loss`` sections."""
    plans = sorted((args.out / "tpe" / "ray").glob("*/confirm_arms.json"))
    if not plans:
        raise SystemExit("the fullres stage needs the tpe stage's confirm stage")
    plan = json.loads(plans[-1].read_text())
    by_label = {f"tpe {a['label']}" if not a["baseline"] else a["label"]: a for a in plan["arms"]}
    ranked = sorted(arms, key=lambda a: -mean([s["mIoU"] for s in arms[a].values()]))
    best = next(a for a in ranked if a.startswith("tpe "))
    base = next(a for a in ranked if a.startswith("base "))
    return {a: by_label[a]["config"]["experiment"]["loss"] for a in (best, base)}


def fullres_folder(args: argparse.Namespace, label: str, seed: int) -> Path:
    return args.out / "fullres" / "runs" / label.replace(" ", "_") / f"seed{seed}"


def fullres(args: argparse.Namespace) -> None:
    """Train, then score on test, the tpe winner and best baseline at full resolution, seed
    by seed, ``--fullres-parallel`` runs at a time (the cores shared out; with 2, a seed's
    pair together; see RESULTS.md for which is faster), so that a stage stopped part-way
    leaves pairs; a run is skipped once scored, one killed before that trains again."""
    base = yaml.safe_load(args.fullres_config.read_text())
    losses = winner_losses(args, confirm_runs(args, "tpe"))
    todo = [
        (label, loss, seed)
        for seed in args.fullres_seeds
        for label, loss in losses.items()
        if not (fullres_folder(args, label, seed) / _eval(args)).is_file()
    ]
    threads = max(1, (os.cpu_count() or 1) // args.fullres_parallel)
    with ThreadPoolExecutor(args.fullres_parallel) as pool:
        list(pool.map(lambda job: fullres_run(args, base, *job, threads=threads), todo))


def _eval(args: argparse.Namespace) -> str:
    """The file ``tune_losses.evaluate`` writes in a run folder for the confirm split."""
    return f"eval_{args.split}.json"


def fullres_run(
    args: argparse.Namespace, base: dict[str, Any], label: str, loss: Any, seed: int, threads: int
) -> None:
    """One full-resolution run: ``tune_losses.train`` at ``seed``, then its last weights
    scored on the confirm split with ``tune_losses.evaluate``."""
    folder = fullres_folder(args, label, seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = {**base["train"], "seed": seed, "epochs": args.fullres_epochs, "threads": threads}
    train["early_stopping"] = {"patience": None}
    config = {**base, "train": train, "loss": loss}
    (folder / "variant.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "tune_losses.train", "--config"]
    cmd += [str(folder / "variant.yaml"), "--out", str(folder)]
    run(cmd, folder / "train.log")
    cmd = [sys.executable, "-m", "tune_losses.evaluate", "--run", str(folder)]
    run([*cmd, "--split", args.split], folder / "eval.log")


def fullres_scores(args: argparse.Namespace) -> dict[str, dict[int, dict[str, float]]]:
    """``{arm: {seed: metrics}}`` of the full-resolution runs scored so far."""
    from tune_losses.scorecard import mlflow_metrics

    out: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted((args.out / "fullres" / "runs").glob(f"*/seed*/{_eval(args)}")):
        flat = mlflow_metrics(json.loads(path.read_text()), args.split)
        metrics = {k.removeprefix(f"{args.split}/"): v for k, v in flat.items()}
        label = path.parent.parent.name.replace("_", " ", 1)
        out.setdefault(label, {})[int(path.parent.name.removeprefix("seed"))] = metrics
    return out


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def summary_rows(arms: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    """Each arm's seeds, mean ± sd of the headline metrics and classes at 0 IoU, best first."""
    rows = []
    for label, seeds in arms.items():
        row: dict[str, Any] = {"arm": label, "seeds": sorted(seeds)}
        for key in METRICS:
            values = [seeds[s].get(key, math.nan) for s in sorted(seeds)]
            row[key] = mean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row[f"{key}_per_seed"] = values
        zero = {k[len("IoU/") :] for s in seeds.values() for k, v in s.items() if k[:4] == "IoU/"}
        row["zero_classes"] = sorted(
            c for c in zero if any(s.get(f"IoU/{c}", 1.0) == 0.0 for s in seeds.values())
        )
        rows.append(row)
    return sorted(rows, key=lambda r: -r["mIoU"] if math.isfinite(r["mIoU"]) else math.inf)


def gain(arms: dict[str, Any], a: str, b: str, key: str = "mIoU") -> dict[str, Any] | None:
    """``a - b`` on ``key`` paired over their common seeds, with its 95 % t-interval."""
    from tune_losses.tracking import paired_interval

    seeds = sorted(set(arms[a]) & set(arms[b]))
    diffs = [arms[a][s][key] - arms[b][s][key] for s in seeds]
    if len(diffs) < 2:
        return None
    m, low, high = paired_interval(diffs)
    return {"a": a, "b": b, "metric": key, "seeds": seeds, "gain": m, "low": low, "high": high}


def comparisons(arms: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The searched winners against the best baseline and against each other."""
    best = {}
    for prefix in ("tpe ", "random ", "base "):
        best[prefix] = next((r["arm"] for r in rows if r["arm"].startswith(prefix)), None)
    pairs = [("tpe ", "base ", k) for k in METRICS] + [("random ", "base ", "mIoU")]
    pairs.append(("tpe ", "random ", "mIoU"))
    out = [gain(arms, best[a], best[b], k) for a, b, k in pairs if best[a] and best[b]]
    return [g for g in out if g is not None]


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Split: {result['split']}. Arms best first (mean ± sd over seeds):", ""]
    lines += ["| arm | seeds | mIoU | Boundary IoU | classes at 0 IoU |", "|---|---|---|---|---|"]
    for section, rows in (("", result["rows"]), ("full res ", result["fullres_rows"])):
        for r in rows:
            cells = [f"{r[k]:.2f} ± {r[k + '_sd']:.2f}" for k in METRICS]
            seeds = ",".join(map(str, r["seeds"]))
            zero = ", ".join(r["zero_classes"]) or "-"
            lines.append(f"| {section}{r['arm']} | {seeds} | {' | '.join(cells)} | {zero} |")
    lines += ["", "Paired gains (95 % t-interval over the common seeds):", ""]
    for g in result["gains"] + result["fullres_gains"]:
        lines.append(
            f"- {g['a']} − {g['b']}, {g['metric']}: {g['gain']:+.2f} "
            f"[{g['low']:+.2f}, {g['high']:+.2f}] (seeds {g['seeds']})"
        )
    lines += ["", "What each search saw (best val mIoU; the seed mean of a repeated one):", ""]
    lines += ["| stage | trial | status | epochs | best val mIoU | per seed |", "|---" * 6 + "|"]
    for r in result["search"]:
        seeds = " ".join(f"{v:.2f}" for v in r["seeds"]) or "-"
        lines.append(
            f"| {r['stage']} | {r['trial']} | {r['status']} | {r['epochs']} "
            f"| {r['best']:.2f} | {seeds} |"
        )
    lines += ["", "| stage | part | runs | epochs | wall (min) |", "|---|---|---|---|---|"]
    for c in result["compute"]:
        lines.append(
            f"| {c['stage']} | {c['part']} | {c['runs']} | {c['epochs']} | {c['wall_min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(arms: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    """Grouped bars: mean test IoU per class for each arm, the seeds' range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(
        {k[4:] for seeds in arms.values() for s in seeds.values() for k in s if k[:4] == "IoU/"}
    )
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(names)), 4.0))
    for i, (label, seeds) in enumerate(arms.items()):
        values = np.array([[s.get(f"IoU/{n}", np.nan) for n in names] for s in seeds.values()])
        mid = np.nanmean(values, 0)
        err = np.stack([mid - np.nanmin(values, 0), np.nanmax(values, 0) - mid])
        x = np.arange(len(names)) + (i - (len(arms) - 1) / 2) * width
        ax.bar(x, mid, width, yerr=err, label=label)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title("per-class IoU of the confirm runs, mean over seeds (bars: min-max)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Read every stage back, write ``gain.json``, ``gain.md`` and the plot, print the table."""
    arms = {**confirm_runs(args, "tpe"), **confirm_runs(args, "random")}
    rows = summary_rows(arms)
    full = fullres_scores(args)
    full_rows = summary_rows(full)
    full_gains = []
    if len(full) == 2:
        win, base = sorted(full, key=lambda a: a.startswith("base "))
        full_gains = [g for g in (gain(full, win, base, k) for k in METRICS) if g]
    result = {
        "split": args.split,
        "rows": rows,
        "gains": comparisons(arms, rows),
        "fullres_rows": full_rows,
        "fullres_gains": full_gains,
        "compute": compute(args, "tpe") + compute(args, "random"),
        "search": search_rows(args, "tpe") + search_rows(args, "random"),
        "arms": {a: {str(s): m for s, m in seeds.items()} for a, seeds in arms.items()},
    }
    (args.out / "gain.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "gain.md").write_text(text)
    if arms:
        plot(arms, args.out / "per_class_iou.png")
    print(text, flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="synthetic data, tiny settings (CI)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "camvid")
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "camvid_study.yaml")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--search-seed", type=int, default=0, help="both searches' sampler seed")
    p.add_argument("--fullres-config", type=Path, default=ROOT / "configs" / "camvid_unet.yaml")
    p.add_argument("--fullres-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fullres-epochs", type=int, default=12)
    p.add_argument("--fullres-parallel", type=int, default=1, help="full-res runs at a time")
    p.add_argument("--report-only", action="store_true", help="run nothing: tabulate what is done")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out, args.space = args.out.resolve(), args.space.resolve()
    args.fullres_config = args.fullres_config.resolve()
    os.chdir(ROOT)  # space files name their data relative to the repository root
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.space = args.out / "quick_space.yaml"
        args.space.write_text(yaml.safe_dump(QUICK_SPACE, sort_keys=False))
        args.stages = [s for s in args.stages if s != "fullres"]
    confirm = yaml.safe_load(args.space.read_text())["search"]["confirm"]
    args.split = confirm["split"]
    log(f"load average {os.getloadavg()[0]:.2f}; stages {args.stages}, out {args.out}")
    for stage in args.stages:
        if not args.report_only and stage in ("tpe", "random"):
            search(args, stage)
        if not args.report_only and stage == "fullres":
            fullres(args)
        report(args)
    log(f"load average {os.getloadavg()[0]:.2f}; wrote {args.out}/gain.md, gain.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
