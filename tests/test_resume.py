"""``--resume`` after a SIGKILL of the driver at the worst moments: mid-trial, right after a
trial's end was logged (Optuna already told, Ray's last snapshot older), right after a trial
started (an Optuna trial Ray never saved), during the summary. Afterwards the Optuna
study, Ray's experiment state and MLflow agree, trial for trial."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest

from conftest import (
    assert_one_value_per_step,
    run_cli,
    runs_of,
    sigkill_after,
    sqlite_store,
    start_search,
    write_space,
)

ENDED = " ended ("  # "<trial> ended (<reason>): ..." (tune/callback.py)
DICE = "loss.decode.dice.weight"
GRID = [0.0, 0.25, 0.5, 0.75]


def dice_of(params: dict) -> float:
    """The dice weight of a trial's params: Optuna's ``DICE`` (``DICE.grid`` for a grid,
    its option's text) or MLflow's resolved ``DICE``."""
    return float(next(v for k, v in params.items() if k.startswith(DICE)))


@dataclass
class Killed:
    """A search SIGKILLed at a printed marker, ``--resume``-d and killed again at each next
    marker, then resumed to its end: one stage a fixture, so that a test waits only for the
    stage it reads (and a failure names the stage)."""

    root: Path
    args: list[str]
    killed: list[str] = field(default_factory=list)  # what each killed driver printed
    # MLflow's parent and child statuses after each kill
    statuses: list[tuple[list[str], set[str]]] = field(default_factory=list)
    done: subprocess.CompletedProcess[str] | None = None  # the last --resume

    @classmethod
    def start(cls, root: Path, space: Path, marker: str) -> Killed:
        """A new search on ``space`` in ``root``, killed once ``marker`` is printed."""
        uri = sqlite_store(root / "mlruns.db")
        args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
        return cls(root, [*args, "--storage", str(root / "ray")]).kill_after(marker)

    @property
    def uri(self) -> str:
        return self.args[self.args.index("--tracking-uri") + 1]

    @property
    def run_dir(self) -> Path:
        (run_dir,) = (self.root / "ray").iterdir()
        return run_dir

    def kill_after(self, marker: str) -> Killed:
        """Run (``--resume`` after the first kill) and SIGKILL the driver once ``marker`` is
        printed; what it printed and MLflow's statuses are kept."""
        resume = ["--resume"] if self.killed else []
        self.killed.append(sigkill_after(start_search(self.root, *self.args, *resume), marker))
        _, parents, children = runs_of(self.uri)
        self.statuses.append(([p.info.status for p in parents], {c.info.status for c in children}))
        return self

    def finish(self) -> Killed:
        """``--resume`` to the end."""
        self.done = run_cli(self.root, *self.args, "--resume")
        return self

    def study(self) -> optuna.Study:
        storage = f"sqlite:///{self.run_dir / 'optuna.db'}"
        return optuna.load_study(study_name=self.run_dir.name, storage=storage)

    def ray_trials(self) -> dict[str, str]:
        """Ray's trials (id -> status) in its newest experiment state."""
        newest = max(self.run_dir.glob("experiment_state-*.json"))
        data = json.loads(newest.read_text())
        states = [json.loads(state) for state, _ in data["trial_data"]]
        return {s["trial_id"]: s["status"] for s in states}


# killed_at_ends: 4 trials, TPE + ASHA, 4 epochs: killed mid-trial once a trial has reported
# twice (Ray's last snapshot may be older), resumed, killed right after a trial's end was
# logged, resumed, killed again right after the next end, then resumed to the end.


@pytest.fixture(scope="module")
def ends_killed_mid_trial(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    root = tmp_path_factory.mktemp("killed_at_ends")
    search = {"num_samples": 4, "max_concurrent": 2, "grace_period": 1, "reduction_factor": 2}
    space = write_space(root / "space.yaml", search=search)
    return Killed.start(root, space, "epoch 2/4")


@pytest.fixture(scope="module")
def ends_killed_after_an_end(ends_killed_mid_trial: Killed) -> Killed:
    return ends_killed_mid_trial.kill_after(ENDED)


@pytest.fixture(scope="module")
def ends_killed_after_the_next_end(ends_killed_after_an_end: Killed) -> Killed:
    return ends_killed_after_an_end.kill_after(ENDED)


@pytest.fixture(scope="module")
def killed_at_ends(ends_killed_after_the_next_end: Killed) -> Killed:
    return ends_killed_after_the_next_end.finish()


# grid_killed_at_start: a 4-point grid (FIFO, 3 epochs): killed right after the third trial
# started (after Ray's last snapshot: its Optuna trial is one Ray does not know; "<trial>
# (t03 ...) started"), resumed and killed as the summary starts, then resumed to the end.


@pytest.fixture(scope="module")
def grid_killed_at_t03(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    root = tmp_path_factory.mktemp("grid_killed")
    loss = {
        "decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"grid": GRID}}},
        "aux": {"ce": {"weight": 0.4}},
    }
    search = {"max_concurrent": 2, "scheduler": "fifo"}
    space = write_space(
        root / "space.yaml", loss=loss, search=search, train={"epochs": 3, "lr": 0.005}
    )
    return Killed.start(root, space, "(t03")


@pytest.fixture(scope="module")
def grid_killed_in_the_summary(grid_killed_at_t03: Killed) -> Killed:
    return grid_killed_at_t03.kill_after("writing the summary")


@pytest.fixture(scope="module")
def grid_killed_at_start(grid_killed_in_the_summary: Killed) -> Killed:
    return grid_killed_in_the_summary.finish()


def _assert_all_agree(resumed: Killed, n: int) -> None:
    """Optuna trials = Ray trials = MLflow children (``n``), all finished, one value per
    step, and each child's end as its Optuna trial's (state, last step)."""
    done = resumed.done
    assert done is not None and done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    trials = resumed.study().get_trials(deepcopy=False)
    assert len(trials) == n, [(t.number, t.state) for t in trials]
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    ray = resumed.ray_trials()
    assert len(ray) == n and set(ray.values()) == {"TERMINATED"}, ray
    client, parents, children = runs_of(resumed.uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == n
    assert {c.data.tags["ray.trial_id"] for c in children} == set(ray)
    assert sorted(c.info.run_name.split()[0] for c in children) == [
        f"t{i:02d}" for i in range(1, n + 1)
    ]
    by_value = {dice_of(c.data.params): c for c in children}
    assert len(by_value) == n
    for trial in trials:
        child = by_value[dice_of(trial.params)]
        assert child.info.status == "FINISHED"
        assert_one_value_per_step(client, child)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert steps == list(range(1, max(trial.intermediate_values) + 1)), steps
        pruned = child.data.tags["stop_reason"] == "asha"
        assert pruned == (trial.state.name == "PRUNED"), (trial.number, child.data.tags)
    for parent_metric in parents[0].data.metrics:
        history = client.get_metric_history(parents[0].info.run_id, parent_metric)
        assert len(history) == 1, (parent_metric, history)


@pytest.mark.slow
def test_killed_mid_trial_leaves_runs_running(ends_killed_mid_trial: Killed) -> None:
    out = ends_killed_mid_trial.killed[0]
    assert "epoch 2/4" in out, out[-3000:]
    parents, children = ends_killed_mid_trial.statuses[0]
    assert parents == ["RUNNING"] and "RUNNING" in children  # SIGKILL: nothing closed them


@pytest.mark.slow
def test_a_resume_after_a_mid_trial_kill_runs_on_to_the_next_end(
    ends_killed_after_an_end: Killed,
) -> None:
    out = ends_killed_after_an_end.killed[1]
    assert ENDED in out and "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_a_resume_after_a_kill_at_an_end_runs_on_to_the_next_end(
    ends_killed_after_the_next_end: Killed,
) -> None:
    out = ends_killed_after_the_next_end.killed[2]
    assert ENDED in out and "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_killed_right_after_trial_ends_resumes_to_one_trial_each(
    killed_at_ends: Killed,
) -> None:
    for out in killed_at_ends.killed[1:]:
        assert ENDED in out, out[-3000:]
    assert killed_at_ends.done is not None
    assert "UpdateFinishedTrialError" not in killed_at_ends.done.stdout
    _assert_all_agree(killed_at_ends, 4)


@pytest.mark.slow
def test_runs_left_running_by_a_kill_are_finished_by_the_resume(killed_at_ends: Killed) -> None:
    parents, children = killed_at_ends.statuses[0]
    assert parents == ["RUNNING"] and "RUNNING" in children
    _, parents, children = runs_of(killed_at_ends.uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert {c.info.status for c in children} == {"FINISHED"}


@pytest.mark.slow
def test_killed_right_after_a_trial_starts_leaves_the_search_running(
    grid_killed_at_t03: Killed,
) -> None:
    assert "(t03" in grid_killed_at_t03.killed[0], grid_killed_at_t03.killed[0][-3000:]
    parents, children = grid_killed_at_t03.statuses[0]
    assert parents == ["RUNNING"] and "RUNNING" in children


@pytest.mark.slow
def test_killed_as_the_summary_starts_after_every_trial_ended(
    grid_killed_in_the_summary: Killed,
) -> None:
    out = grid_killed_in_the_summary.killed[1]
    assert "writing the summary" in out and "Traceback" not in out, out[-3000:]
    parents, children = grid_killed_in_the_summary.statuses[1]
    assert parents == ["RUNNING"] and children == {"FINISHED"}


@pytest.mark.slow
def test_killed_right_after_a_trial_starts_resumes_to_one_trial_each(
    grid_killed_at_start: Killed,
) -> None:
    assert "(t03" in grid_killed_at_start.killed[0]
    _assert_all_agree(grid_killed_at_start, 4)


@pytest.mark.slow
def test_killed_grid_search_trains_each_point_once(grid_killed_at_start: Killed) -> None:
    trials = grid_killed_at_start.study().get_trials(deepcopy=False)
    assert sorted(t.system_attrs["grid_id"] for t in trials) == [0, 1, 2, 3]
    assert sorted(dice_of(t.params) for t in trials) == GRID
    _, _, children = runs_of(grid_killed_at_start.uri)
    assert sorted(dice_of(c.data.params) for c in children) == GRID


@pytest.mark.slow
def test_killed_during_the_summary_resumes_to_a_finished_parent(
    grid_killed_at_start: Killed,
) -> None:
    assert "writing the summary" in grid_killed_at_start.killed[1]
    assert grid_killed_at_start.done is not None
    assert "best config:" in grid_killed_at_start.done.stdout
    assert (grid_killed_at_start.run_dir / "best_config.yaml").is_file()
