"""Does a searched loss beat plain CE? CE, the searched mix and two no-search mixes (issue 12).

Usage:
    .venv/bin/python benchmarks/bench_gain.py                # CamVid, resumable, hours on 2 cores
    .venv/bin/python benchmarks/bench_gain.py --quick --out /tmp/gain   # synthetic, ~1 min
    .venv/bin/python benchmarks/bench_gain.py --config configs/camvid_unet.yaml --seeds 0 1 2

Steps, each skipped when its output is already in ``--out`` (so a killed run resumes):

1. a search over ``--space`` (default ``search_spaces/camvid_mix.yaml``, trials and ASHA
   settings from the flags) with ``python -m tune_losses.search``, into ``--out/ray_results``
   and ``--out/mlruns.db``; its ``best_config.yaml`` gives the searched loss;
2. each variant trained with ``python -m tune_losses.train`` on ``--config`` (data, model and
   train sections; the variant gives the ``loss`` section) for every seed, into
   ``--out/runs/<config>/<variant>/seed<k>``, ``--jobs`` runs at once:

   - ``ce``: the config's own loss (plain CE on both heads);
   - ``paddleseg``: CE 0.8 + Lovasz 0.2 on the decode head (PaddleSeg's fixed mix), aux CE;
   - ``uncertainty``: the five terms at weight 1 with ``loss.weighting: uncertainty``
     (Kendall et al. 2018: the weights are learned with the model, no search), aux CE;
   - ``searched``: the search's best loss, unchanged;

3. the last weights of each run evaluated on the test split (``data.val_split: test``).

Reported per variant (mean and standard deviation over seeds): best val mIoU, val Boundary
IoU at that epoch, test mIoU and test Boundary IoU of the last weights, per-class test IoU;
``gain.json``, ``per_class_iou.png`` and markdown tables (printed, and ``gain.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tune_losses.tiny import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("ce", "paddleseg", "uncertainty", "searched")
FIVE_TERMS = {
    "ce": {"weight": 1.0},
    "focal": {"weight": 1.0, "gamma": 2.0},
    "lovasz": {"weight": 1.0, "classes": "present"},
    "dice": {"weight": 1.0, "smooth": 1.0},
    "boundary": {"weight": 1.0},
}
AUX_CE = {"ce": {"weight": 0.4}}

QUICK_CONFIG = tiny_experiment()  # plain CE on both heads (aux 0.4)
QUICK_SPACE = {
    **QUICK_CONFIG,
    "loss": {
        "decode": {
            "ce": {"weight": 1.0},
            "lovasz": {"weight": {"uniform": [0.0, 1.0]}, "classes": "present"},
        },
        "aux": dict(AUX_CE),
    },
    "search": {"num_samples": 2, "max_concurrent": 1, "grace_period": 1},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], logfile: Path) -> None:
    """Run a CLI of this package from the repository root, its output appended to ``logfile``."""
    log(" ".join(cmd[1:]) + f"  (log: {logfile})")
    with logfile.open("a") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {logfile}")


def best_trial_loss(args: argparse.Namespace) -> dict[str, Any]:
    """The loss of the best trial the search in ``--out`` has logged so far, ranked as the
    search ranks them (its leaderboard's first row), for a search stopped before its end."""
    from tune_losses.tracking import TRIAL_CONFIG, find_parent, load_trials, open_client

    client = open_client(f"sqlite:///{args.out / 'mlruns.db'}")
    best = load_trials(client, find_parent(client, "bench_gain"))[0]
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(client.download_artifacts(best.run_id, TRIAL_CONFIG, scratch)).read_text()
    log(f"searched loss: best trial so far, {best.name} (val mIoU {best.best:.2f})")
    return yaml.safe_load(config)["loss"]


def searched_loss(args: argparse.Namespace) -> dict[str, Any]:
    """The best loss of the search in ``--out`` (run or resumed here when it has none)."""
    storage = args.out / "ray_results"
    found = sorted(storage.glob("*/best_config.yaml"), key=lambda p: p.stat().st_mtime)
    if not found and args.take_best:
        return best_trial_loss(args)
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "tune_losses.search",
            "--space",
            str(args.space),
            "--storage",
            str(storage.resolve()),
            "--tracking-uri",
            f"sqlite:///{(args.out / 'mlruns.db').resolve()}",
            "--experiment",
            "bench_gain",
            "--num-samples",
            str(args.num_samples),
            "--seed",
            str(args.search_seed),
            f"--set=train.epochs={args.epochs}",
            *(f"--set={s}" for s in args.search_set),
        ]
        if any(p.is_dir() for p in storage.glob("*")):
            cmd.append("--resume")
        run(cmd, args.out / "search.log")
        found = sorted(storage.glob("*/best_config.yaml"), key=lambda p: p.stat().st_mtime)
    best = yaml.safe_load(found[-1].read_text())
    log(f"searched loss from {found[-1]}")
    return best["loss"]


def variant_loss(name: str, base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if name == "ce":
        return base["loss"]
    if name == "paddleseg":
        return {"decode": {"ce": {"weight": 0.8}, "lovasz": {"weight": 0.2}}, "aux": AUX_CE}
    if name == "uncertainty":
        return {"weighting": "uncertainty", "decode": FIVE_TERMS, "aux": AUX_CE}
    return searched_loss(args)


def finished(folder: Path) -> bool:
    """Whether the run in ``folder`` ended: all its epochs, or stopped early (an interrupted
    ``tune_losses.train`` also writes its summary)."""
    if not (folder / "best.json").is_file() or not (folder / "history.json").is_file():
        return False
    history = json.loads((folder / "history.json").read_text())
    return bool(history) and (
        history[-1]["epoch"] == history[-1]["epochs_max"] or history[-1]["early_stopped"] == 1.0
    )


def train(variant: str, seed: int, base: dict[str, Any], args: argparse.Namespace) -> Path:
    """Train one variant at one seed (skipped when its summary exists); its run folder."""
    folder = args.out / "runs" / args.config_name / variant / f"seed{seed}"
    if finished(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = {**base, "loss": variant_loss(variant, base, args)}
    config["train"] = {
        **base.get("train", {}),
        "seed": seed,
        "epochs": args.epochs,
        "threads": args.threads,
    }
    (folder / "variant.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "tune_losses.train", "--config", str(folder / "variant.yaml")]
    run([*cmd, "--out", str(folder)], folder / "train.log")
    return folder


def evaluate_test(folder: Path) -> dict[str, float]:
    """Test-split metrics of the last weights saved in ``folder`` (cached in ``test.json``)."""
    cached = folder / "test.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from tune_losses.config import load_experiment
    from tune_losses.engine import Trainer

    exp = load_experiment(folder / "variant.yaml")
    if exp.data.format == "synthetic":  # no test split: the val split stands in (quick mode)
        test = exp
    else:
        test = exp.model_copy(update={"data": exp.data.model_copy(update={"val_split": "test"})})
    trainer = Trainer(test)
    trainer.load(folder)
    metrics, _ = trainer.evaluate()
    cached.write_text(json.dumps(metrics))
    return metrics


def collect(folder: Path, class_names: list[str]) -> dict[str, Any]:
    """One run's numbers: best val mIoU and its Boundary IoU, test metrics, per-class IoU."""
    history = json.loads((folder / "history.json").read_text())
    best = max(history, key=lambda r: r["val/mIoU"])
    test = evaluate_test(folder)
    prefix = "val/IoU/"
    return {
        "val_mIoU": best["val/mIoU"],
        "val_boundary_IoU": best["val/boundary_IoU"],
        "test_mIoU": test["val/mIoU"],
        "test_boundary_IoU": test["val/boundary_IoU"],
        "test_iou": {n: test.get(prefix + n, math.nan) for n in class_names},
        "epochs": len(history),
        "s_per_epoch": statistics.median(r["time/epoch_s"] for r in history),
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def tables(results: dict[str, list[dict[str, Any]]], class_names: list[str]) -> str:
    """The headline table (mean ± sd over seeds) and the per-class test IoU table."""
    keys = ("val_mIoU", "val_boundary_IoU", "test_mIoU", "test_boundary_IoU")
    lines = [
        "| loss | seeds | val mIoU | val Boundary IoU | test mIoU | test Boundary IoU "
        "| classes at 0 test IoU | s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, runs in results.items():
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in (mean_sd([r[k] for r in runs]) for k in keys)]
        zero = sorted({n for r in runs for n, v in r["test_iou"].items() if v == 0.0})
        s_epoch = statistics.fmean(r["s_per_epoch"] for r in runs)
        lines.append(
            f"| {variant} | {len(runs)} | {' | '.join(cells)} | {', '.join(zero) or '-'} "
            f"| {s_epoch:.1f} |"
        )
    lines += ["", "| class | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for name in class_names:
        row = [statistics.fmean(r["test_iou"][name] for r in runs) for runs in results.values()]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], class_names: list[str], path: Path) -> None:
    """Grouped bars: mean test IoU per class for each variant, the seeds' range as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(class_names))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(class_names)), 4.0))
    for i, (variant, runs) in enumerate(results.items()):
        values = np.array([[r["test_iou"][n] for n in class_names] for r in runs])
        mean = values.mean(0)
        err = np.stack([mean - values.min(0), values.max(0) - mean])
        miou = statistics.fmean(r["test_mIoU"] for r in runs)
        label = f"{variant} (test mIoU {miou:.1f})"
        ax.bar(x + (i - (len(results) - 1) / 2) * width, mean, width, yerr=err, label=label)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("test IoU (%)")
    ax.set_title("per-class test IoU, mean over seeds (bars: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="synthetic data, tiny settings (CI)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gain")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "camvid_small.yaml")
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "camvid_mix.yaml")
    p.add_argument("--epochs", type=int, default=8, help="train.epochs of the search and runs")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument(
        "--search-set",
        nargs="*",
        default=["search.grace_period=2", "search.reduction_factor=2", "search.n_startup_trials=4"],
        help="KEY=VALUE overrides of the search (as its --set)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs trained at once, each on cpus/jobs torch threads (one thread per run shares "
        "a small CPU better than two threads that stall each other)",
    )
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument(
        "--take-best",
        action="store_true",
        help="a stored search that did not finish is not resumed: its best trial so far is "
        "the searched loss",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tabulate the runs already finished in --out",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.config, args.space = args.config.resolve(), args.space.resolve()
    os.chdir(ROOT)  # configs name their data relative to the repository root
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.config = args.out / "quick_config.yaml"
        args.config.write_text(yaml.safe_dump(QUICK_CONFIG, sort_keys=False))
        args.space = args.out / "quick_space.yaml"
        args.space.write_text(yaml.safe_dump(QUICK_SPACE, sort_keys=False))
        args.num_samples, args.search_set, args.seeds, args.epochs = 2, [], args.seeds[:1], 2
    args.config_name = args.config.stem
    base = yaml.safe_load(args.config.read_text())
    log(f"load average {os.getloadavg()[0]:.2f}; {args.config_name}, seeds {args.seeds}")
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    tasks = [(v, seed) for seed in args.seeds for v in args.variants]  # seed 0 of all first
    if not args.report_only:
        if "searched" in args.variants:
            searched_loss(args)  # the search first, on every core
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda task: train(*task, base, args), tasks))
    folders: dict[str, list[Path]] = {v: [] for v in args.variants}
    for variant, seed in tasks:
        folder = args.out / "runs" / args.config_name / variant / f"seed{seed}"
        if finished(folder):
            folders[variant].append(folder)
    folders = {v: fs for v, fs in folders.items() if fs}
    if not folders:
        raise SystemExit(f"no finished run in {args.out / 'runs' / args.config_name}")
    args.variants = list(folders)
    class_names = json.loads((folders[args.variants[0]][0] / "best.json").read_text())[
        "class_names"
    ]
    results = {v: [collect(f, class_names) for f in fs] for v, fs in folders.items()}
    text = tables(results, class_names)
    (args.out / "gain.md").write_text(text + "\n")
    (args.out / "gain.json").write_text(json.dumps(results, indent=1))
    plot(results, class_names, args.out / "per_class_iou.png")
    print(text)
    log(f"load average {os.getloadavg()[0]:.2f}; wrote {args.out}/gain.md, per_class_iou.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
