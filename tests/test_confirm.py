"""Baselines and the confirm stage (issue 19), read back from MLflow: a tiny search with two
baselines and ``confirm: {top_k: 2, seeds: 2}``."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from scipy.stats import t as student_t

from conftest import (
    Searched,
    run_cli,
    run_notebook,
    runs_of,
    sigkill_after,
    sqlite_store,
    start_search,
    write_space,
)

EPOCHS = 2
SEED = 0
BASELINES = {
    "ce": {"decode": {"ce": {"weight": 1.0}}},
    "ce_dice": {"decode": {"ce": {"weight": 1.0}, "dice": {"weight": 0.5}}},
}


@dataclass
class Killed:
    """The search, SIGKILLed as its first confirm run starts: where it ran and what it
    printed."""

    args: list[str]
    root: Path
    out: str


@pytest.fixture(scope="module")
def killed_in_confirm(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """2 searched configurations + 2 baselines (2 epochs, FIFO), then 4 arms x 2 seeds; the
    driver is SIGKILLed as the first confirm run starts."""
    root = tmp_path_factory.mktemp("confirm")
    space = write_space(
        root / "space.yaml",
        train={"epochs": EPOCHS, "lr": 0.005, "seed": SEED, "threads": 1},
        search={
            "num_samples": 2,
            "max_concurrent": 2,
            "scheduler": "fifo",
            "sampler": "random",
            "baselines": BASELINES,
            "confirm": {"top_k": 2, "seeds": 2},
        },
        loss={"decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"uniform": [0.0, 1.0]}}}},
    )
    uri = sqlite_store(root / "mlruns.db")
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    args += ["--storage", str(root / "ray")]
    return Killed(args, root, sigkill_after(start_search(root, *args), "(confirm "))


@pytest.fixture(scope="module")
def confirmed(killed_in_confirm: Killed) -> Searched:
    """The killed search resumed to its end: every test but the kill's reads this one."""
    killed = killed_in_confirm
    done = run_cli(killed.root, *killed.args, "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (killed.root / "ray").iterdir()
    return Searched(killed.args[killed.args.index("--tracking-uri") + 1], run_dir, done.stdout)


def _plan(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("confirm stage:")]


@pytest.mark.slow
def test_the_confirm_stage_plans_its_arms_once_the_search_stage_ended(
    killed_in_confirm: Killed,
) -> None:
    """Killed as the first confirm run starts: the plan was printed once (4 arms), every
    search-stage run (2 trials, 2 baselines) is FINISHED, the parent still RUNNING."""
    planned = _plan(killed_in_confirm.out)
    assert len(planned) == 1 and "training 4 arms" in planned[0], killed_in_confirm.out[-3000:]
    uri = killed_in_confirm.args[killed_in_confirm.args.index("--tracking-uri") + 1]
    _, parents, children = runs_of(uri)
    assert [p.info.status for p in parents] == ["RUNNING"]
    search = [c for c in children if "confirm" not in c.data.tags]
    assert len(search) == 4 and all(c.info.status == "FINISHED" for c in search)


@pytest.mark.slow
def test_a_driver_killed_in_the_confirm_stage_resumes_the_stage(
    killed_in_confirm: Killed, confirmed: Searched
) -> None:
    """The resume goes on with the saved plan (the same arms and seeds), trains no searched
    trial again, and leaves one FINISHED run per arm and seed (the killed run continued, or
    deleted and run again when Ray's snapshot had not seen it)."""
    (planned,) = _plan(killed_in_confirm.out)
    assert planned in confirmed.out
    resumed = [line for line in confirmed.out.splitlines() if " started: " in line]
    assert resumed and all("(confirm " in line or "(restarted)" in line for line in resumed)
    _, _, children = runs_of(confirmed.uri)
    pairs = [(c.data.tags["confirm"], c.data.tags["seed"]) for c in _confirm_runs(children)]
    assert len(pairs) == len(set(pairs)) == 8
    assert all(c.info.status == "FINISHED" for c in children)


def _confirm_runs(children: list) -> list:
    return [c for c in children if "confirm" in c.data.tags]


@pytest.mark.slow
def test_baselines_ran_every_epoch_and_are_never_the_best_trial(confirmed: Searched) -> None:
    client, (parent,), children = runs_of(confirmed.uri)
    search = [c for c in children if "confirm" not in c.data.tags]
    base = {c.data.tags["baseline"]: c for c in search if "baseline" in c.data.tags}
    assert set(base) == set(BASELINES)
    for name, run in base.items():
        assert run.info.run_name == f"base {name}"
        assert run.data.tags["epochs_run"] == str(EPOCHS)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mIoU")] == [1, 2]
    numbered = sorted(c.info.run_name for c in search if "baseline" not in c.data.tags)
    assert [n.split()[0] for n in numbered] == ["t01", "t02"]
    assert parent.data.tags["best_trial"] not in {
        r.data.tags["ray.trial_id"] for r in base.values()
    } or parent.data.tags["confirm_winner"].startswith("base ")
    board = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(confirmed.run_dir))
    header = Path(board).read_text().splitlines()[0].split(",")
    assert "baseline" in header
    story = parent.data.tags["mlflow.note.content"]
    assert "Best baseline: [base " in story


@pytest.mark.slow
def test_confirm_runs_used_fresh_seeds_and_every_arm(confirmed: Searched) -> None:
    _, _, children = runs_of(confirmed.uri)
    searched_seeds = {
        int(c.data.params["train.seed"]) for c in children if "confirm" not in c.data.tags
    }
    runs = _confirm_runs(children)
    assert len(runs) == 4 * 2
    seeds = {int(c.data.tags["seed"]) for c in runs}
    assert len(seeds) == 2 and not seeds & searched_seeds
    for c in runs:
        assert c.data.params["train.seed"] == c.data.tags["seed"]
        assert c.data.tags["epochs_run"] == str(EPOCHS) and c.info.status == "FINISHED"
    arms = {c.data.tags["confirm"] for c in runs}
    assert {f"base {n}" for n in BASELINES} <= arms and len(arms) == 4


@pytest.mark.slow
def test_the_winner_is_the_best_confirmed_mean_and_the_interval_matches(
    confirmed: Searched, tmp_path: Path
) -> None:
    client, (parent,), children = runs_of(confirmed.uri)
    tmp = tmp_path
    scores: dict[str, dict[int, float]] = {}
    for c in _confirm_runs(children):  # the final epoch's val mIoU, as logged
        scores.setdefault(c.data.tags["confirm"], {})[int(c.data.tags["seed"])] = c.data.metrics[
            "val/mIoU"
        ]
    means = {arm: statistics.fmean(v.values()) for arm, v in scores.items()}
    winner = max(means, key=means.get)
    assert parent.data.tags["confirm_winner"] == winner
    assert parent.data.metrics["confirm/winner_mean"] == pytest.approx(means[winner])
    # best_config.yaml is the winner's configuration, at the seed the search trained it
    best = yaml.safe_load((confirmed.run_dir / "best_config.yaml").read_text())
    arm_run = next(c for c in _confirm_runs(children) if c.data.tags["confirm"] == winner)
    path = client.download_artifacts(arm_run.info.run_id, "trial_config.yaml", str(tmp))
    trained = yaml.safe_load(Path(path).read_text())
    trained["train"]["seed"] = SEED
    assert best == trained
    assert best["train"]["seed"] == SEED
    # the paired gain of the best searched arm over the best baseline, by hand
    searched = max((a for a in means if not a.startswith("base ")), key=means.get)
    baseline = max((a for a in means if a.startswith("base ")), key=means.get)
    d = [scores[searched][s] - scores[baseline][s] for s in sorted(scores[searched])]
    n = len(d)
    mean_d = sum(d) / n
    sd_d = math.sqrt(sum((x - mean_d) ** 2 for x in d) / (n - 1))
    half = student_t.ppf(0.975, n - 1) * sd_d / math.sqrt(n)
    metrics = parent.data.metrics
    assert metrics["confirm/gain"] == pytest.approx(mean_d)
    assert metrics["confirm/gain_low"] == pytest.approx(mean_d - half)
    assert metrics["confirm/gain_high"] == pytest.approx(mean_d + half)
    story = parent.data.tags["mlflow.note.content"]
    assert f"**{mean_d:+.2f}**" in story
    assert f"[{mean_d - half:+.2f}, {mean_d + half:+.2f}]" in story
    assert f"Winner by confirmed mean: {winner}**" in story
    confirm_csv = (confirmed.run_dir / "confirm.csv").read_text()
    assert winner in confirm_csv.splitlines()[1]
    html = (confirmed.run_dir / "report" / "report.html").read_text()
    assert "Confirmed at fresh seeds" in html


@pytest.mark.slow
def test_the_notebook_shows_the_baselines_and_the_confirmed_arms(
    confirmed: Searched, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = run_notebook(confirmed.uri, "e2e", tmp_path, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    shown += "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "base ce_dice" in shown and "Paired gain of" in shown
