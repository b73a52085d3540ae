"""A truth table: a fixed set of losses, each trained at several seeds, every epoch kept.

Usage:
    .venv/bin/python benchmarks/bench_truth.py                       # CamVid, hours on 2 cores
    .venv/bin/python benchmarks/bench_truth.py --seeds 0 1 2 --jobs 2
    .venv/bin/python benchmarks/bench_truth.py --report-only         # tabulate what is done

The eight losses of issue 18 on ``configs/camvid_small.yaml`` (8 epochs, no early stopping,
so every run has every epoch): plain CE; CE + Lovasz 0.5; median-frequency CE + Dice 0.8;
the winner of round 2's ``bench_gain`` search; PaddleSeg's CE 0.8 + Lovasz 0.2 switched on
at 70 %; Focal; CE + Boundary 0.5 + Dice 0.5; sqrt-inverse CE + Lovasz 1.0 (aux CE 0.4
unless the loss says otherwise).

What a search can trust, measured: the truth of a loss is its mean over seeds of the best
val mIoU over all epochs; the table gives each loss's mean, standard deviation and
standard error, and the rank lines (Spearman) of what a search sees against that truth:

- ``epoch e, seed s``: the best val mIoU up to epoch e of one seed (an ASHA rung at e);
- ``seed s vs seed t``: the final values of two seeds (the noise ceiling: a rung cannot
  rank better against one seed than another seed does).

Each run is skipped when finished, and ``truth.json`` / ``truth.md`` are rewritten after
each run, so a killed study resumes and its partial table can be committed as it goes.
"""

from __future__ import annotations

import argparse
import itertools
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

ROOT = Path(__file__).resolve().parents[1]
AUX_CE = {"ce": {"weight": 0.4}}
LOSSES: dict[str, dict[str, Any]] = {
    "ce": {"decode": {"ce": {"weight": 1.0}}, "aux": AUX_CE},
    "ce+lovasz0.5": {"decode": {"ce": {"weight": 1.0}, "lovasz": {"weight": 0.5}}, "aux": AUX_CE},
    "mfce+dice0.8": {
        "decode": {
            "ce": {"weight": 1.0, "class_weights": "median_frequency"},
            "dice": {"weight": 0.8},
        },
        "aux": AUX_CE,
    },
    # round 2's searched winner (benchmarks/RESULTS.md, "Does the search pay?"), as reported
    "gain_winner": {
        "decode": {
            "ce": {"weight": 1.0, "class_weights": "median_frequency"},
            "focal": {"weight": 0.80},
            "lovasz": {"weight": 0.46, "classes": "present"},
            "dice": {"weight": 0.78},
            "boundary": {"weight": 0.12},
        },
        "aux": {"ce": {"weight": {"schedule": "linear", "start": 0.46, "end": 0.03}}},
    },
    "paddleseg_late": {
        "decode": {
            "ce": {"weight": 0.8},
            "lovasz": {"weight": {"schedule": "step", "values": [0.0, 0.2], "milestones": [0.7]}},
        },
        "aux": AUX_CE,
    },
    "focal": {"decode": {"focal": {"weight": 1.0, "gamma": 2.0}}, "aux": AUX_CE},
    "ce+boundary0.5+dice0.5": {
        "decode": {"ce": {"weight": 1.0}, "boundary": {"weight": 0.5}, "dice": {"weight": 0.5}},
        "aux": AUX_CE,
    },
    "sqrtce+lovasz1.0": {
        "decode": {
            "ce": {"weight": 1.0, "class_weights": "sqrt_inverse"},
            "lovasz": {"weight": 1.0},
        },
        "aux": AUX_CE,
    },
}
CURVE = "val/mIoU"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def history_of(folder: Path) -> list[dict[str, Any]] | None:
    """The per-epoch history of a finished run (every epoch of ``epochs_max``), else None."""
    path = folder / "history.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text())
    done = bool(history) and history[-1]["epoch"] == history[-1]["epochs_max"]
    return history if done else None


def train(name: str, seed: int, base: dict[str, Any], args: argparse.Namespace) -> Path:
    """Train loss ``name`` at ``seed`` into its folder (skipped when finished)."""
    folder = args.out / "runs" / name / f"seed{seed}"
    if history_of(folder) is not None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = {**base, "loss": LOSSES[name]}
    config["train"] = {
        **base.get("train", {}),
        "seed": seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "early_stopping": {"patience": None},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "tune_losses.train", "--config", str(folder / "config.yaml")]
    log(f"{name} seed {seed}: training ({folder})")
    with (folder / "train.log").open("a") as out:
        done = subprocess.run(
            ["nice", "-n", str(args.nice), *cmd, "--out", str(folder)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        log(f"{name} seed {seed}: failed ({done.returncode}); see {folder / 'train.log'}")
    write_tables(args)
    return folder


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties), NaN for fewer than 3 points."""
    if len(a) < 3:
        return math.nan

    def ranks(xs: list[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def best_up_to(history: list[dict[str, Any]], epoch: int) -> float:
    return max(row[CURVE] for row in history if row["epoch"] <= epoch)


def table(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run's curve, the truth per loss, and the rank lines."""
    curves: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for name in LOSSES:
        for seed in args.seeds:
            history = history_of(args.out / "runs" / name / f"seed{seed}")
            if history is not None:
                curves.setdefault(name, {})[seed] = history
    full = [n for n in curves if all(s in curves[n] for s in args.seeds)]
    truth = {}
    for name, runs in curves.items():
        finals = [best_up_to(h, args.epochs) for h in runs.values()]
        sd = statistics.stdev(finals) if len(finals) > 1 else math.nan
        truth[name] = {
            "seeds": sorted(runs),
            "final": finals,
            "mean": statistics.fmean(finals),
            "sd": sd,
            "se": sd / math.sqrt(len(finals)) if len(finals) > 1 else math.nan,
        }
    lines: dict[str, float] = {}
    if len(full) >= 3:
        mean = [truth[n]["mean"] for n in full]
        for epoch in args.rung_epochs:
            for seed in args.seeds:
                seen = [best_up_to(curves[n][seed], epoch) for n in full]
                lines[f"epoch {epoch}, seed {seed} vs mean"] = spearman(seen, mean)
        for s, t in itertools.combinations(args.seeds, 2):
            a = [best_up_to(curves[n][s], args.epochs) for n in full]
            b = [best_up_to(curves[n][t], args.epochs) for n in full]
            lines[f"seed {s} vs seed {t} (final)"] = spearman(a, b)
    return {"epochs": args.epochs, "seeds": args.seeds, "complete": full, "truth": truth,
            "rank_lines": lines}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    rows = ["| loss | seeds | best val mIoU per seed | mean | sd | se |", "|---" * 6 + "|"]
    order = sorted(result["truth"], key=lambda n: -result["truth"][n]["mean"])
    for name in order:
        t = result["truth"][name]
        finals = ", ".join(f"{v:.2f}" for v in t["final"])
        rows.append(
            f"| {name} | {len(t['seeds'])} | {finals} | {t['mean']:.2f} | {t['sd']:.2f} "
            f"| {t['se']:.2f} |"
        )
    complete = len(result["complete"])
    rows += ["", f"Rank lines (Spearman) over the {complete} losses with every seed:"]
    rows += ["", "| what a search sees | vs the truth |", "|---|---|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in result["rank_lines"].items()]
    return "\n".join(rows)


def write_tables(args: argparse.Namespace) -> None:
    result = table(args)
    (args.out / "truth.json").write_text(json.dumps(result, indent=1))
    (args.out / "truth.md").write_text(markdown(result) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "camvid_small.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "truth" / "camvid")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rung-epochs", type=int, nargs="+", default=[2, 4])
    p.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training runs")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    os.chdir(ROOT)  # configs name their data relative to the repository root
    base = yaml.safe_load(args.config.read_text())
    if not args.report_only:
        tasks = [(n, s) for s in args.seeds for n in args.losses]  # seed 0 of every loss first
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda task: train(*task, base, args), tasks))
    write_tables(args)
    print((args.out / "truth.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
