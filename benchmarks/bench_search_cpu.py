"""Where a tiny search's CPU goes, by process, in this checkout and another side by side.

Usage:
    .venv/bin/python benchmarks/bench_search_cpu.py [--against REV] [--repeats 3]
        [--out benchmarks/search_cpu]

The test suite runs some thirty end-to-end searches on two cores, so its time is their
CPU, not their wall time: each starts a driver, Ray's daemons and a process per trial
actor that imports torch, the model code and Ray. This runs one tiny search (the tiny
experiment: 6 trials, 4 epochs, TPE + ASHA, 2 at a time, a sqlite MLflow store) with
``python -m tune_losses.search``, samples ``/proc`` every 0.1 s for the CPU time of every
process it starts, and sums it by kind: the driver, the trial actors (``ray::ImplicitFunc``)
and Ray's own processes. ``--against REV`` runs the same search from a ``git worktree`` of
REV, alternating with this checkout (this one first on even repeats) so that a change of
load hits both alike, and prints the means, their spread and the ratio.

Processes that live less than 0.1 s are missed, and CPU used by a process after its last
sample too; both are small against the seconds measured. Writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tune_losses.tiny import tiny_space

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("driver", "trial actors", "ray daemons", "total")
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: str) -> tuple[str, float] | None:
    """(command line, CPU seconds so far) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return cmd, (int(fields[11]) + int(fields[12])) / TICK


def _kind(cmd: str, driver: int, pid: int) -> str:
    if pid == driver:
        return "driver"
    if "ImplicitFunc" in cmd or "train_trial" in cmd:
        return "trial actors"
    return "ray daemons"


def measure(checkout: Path, work: Path) -> dict[str, float]:
    """One search from ``checkout`` in ``work``: CPU seconds by kind, and its wall time."""
    work.mkdir(parents=True)
    spec = work / "space.yaml"
    spec.write_text(yaml.safe_dump(tiny_space(), sort_keys=False))
    before = {pid for pid in os.listdir("/proc") if pid.isdigit()}
    args = ["--space", str(spec), "--tracking-uri", f"sqlite:///{work / 'mlruns.db'}"]
    args += ["--storage", str(work / "ray"), "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    with (work / "search.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tune_losses.search", *args],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        seen: dict[int, tuple[str, float]] = {}
        while True:
            done = proc.poll() is not None
            for pid in os.listdir("/proc"):
                if pid.isdigit() and pid not in before and (sample := _cpu_of(pid)):
                    # an exited process (a zombie) keeps its CPU time but not its name
                    name = sample[0] or seen.get(int(pid), ("", 0.0))[0]
                    seen[int(pid)] = (name, sample[1])
            if done:
                break
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the search in {work} exited {proc.returncode}: see search.log")
    totals = dict.fromkeys(KINDS, 0.0)
    for pid, (cmd, cpu) in seen.items():
        totals[_kind(cmd, proc.pid, pid)] += cpu
        totals["total"] += cpu
    totals["actors started"] = sum(
        1 for pid, (cmd, _) in seen.items() if _kind(cmd, proc.pid, pid) == "trial actors"
    )
    totals["wall"] = wall
    return totals


def _worktree(rev: str, scratch: Path) -> Path:
    """A ``git worktree`` of ``rev`` in ``scratch`` (removed by :func:`main` at the end)."""
    path = scratch / f"checkout-{rev}"
    subprocess.run(
        ["git", "worktree", "add", "--quiet", "--detach", str(path), rev], cwd=ROOT, check=True
    )
    return path


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--against", help="a git revision to run side by side with this checkout")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "search_cpu")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="search_cpu_"))  # the searches' stores and folders
    sides = {"this checkout": ROOT}
    try:
        if args.against:
            sides[args.against] = _worktree(args.against, scratch)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                work = scratch / f"{name.replace(' ', '_')}-{repeat}"
                runs[name].append(measure(sides[name], work))
                print(f"{name} #{repeat}: " + json.dumps(runs[name][-1]), flush=True)
    finally:
        if args.against:
            remove = ["git", "worktree", "remove", "--force", str(sides[args.against])]
            subprocess.run(remove, cwd=ROOT, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    keys = [*KINDS, "actors started", "wall"]
    head = ["CPU s (mean ± sd)", *sides]
    if args.against:
        head.append("ratio")
    print(f"\n| {' | '.join(head)} |\n|{'---|' * len(head)}")
    for key in keys:
        cells = [_stats([r[key] for r in runs[name]]) for name in sides]
        if args.against:
            a, b = (statistics.fmean(r[key] for r in runs[name]) for name in sides)
            cells.append(f"{a / b:.2f}" if b else "-")
        print(f"| {key} | {' | '.join(cells)} |")
    (out / "results.json").write_text(json.dumps({"sides": list(sides), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
