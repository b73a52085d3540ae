"""The run folder of a search through pyarrow.fs (path or file:// URI) and --resume checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_losses.config import ConfigError
from tune_losses.tune import state


def _saved(root: str, name: str, space: Path) -> str:
    run_dir = state.join(root, name)
    saved = {"space": str(space), "space_sha256": state.space_hash(space)}
    state.write_state(run_dir, {**saved, "overrides": ["train.epochs=2"], "num_samples": 4})
    state.write_text(run_dir, state.TUNER_FILE, "")
    return run_dir


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_resume_finds_the_latest_search_of_the_space(tmp_path: Path, uri: bool) -> None:
    space = tmp_path / "quick.yaml"
    space.write_text("loss: {}\n")
    root = f"file://{tmp_path / 'ray'}" if uri else str(tmp_path / "ray")
    _saved(root, "quick-20250101-000000", space)
    newest = _saved(root, "quick-20250102-000000", space)
    state.write_text(state.join(root, "other-20250103-000000"), state.STATE_FILE, "{}")
    assert state.resume_dir(root, space, "latest") == newest
    assert state.read_state(newest)["num_samples"] == 4
    assert state.resume_dir(root, space, "quick-20250101-000000").endswith("000000")
    for bad in ("..", "../x", "/etc", "a/b"):
        with pytest.raises(ConfigError, match="inside --storage"):
            state.resume_dir(root, space, bad)


def test_resume_refuses_a_contradicting_command(tmp_path: Path) -> None:
    space = tmp_path / "quick.yaml"
    space.write_text("loss: {}\n")
    saved = state.read_state(_saved(str(tmp_path), "quick-1", space))
    saved["tracking_uri"] = "sqlite:///a.db"

    def check(**kw: object) -> None:
        args = {"space_file": space, "overrides": [], "flags": {}}
        state.check_resume(saved, "quick-1", **{**args, **kw})

    check(overrides=["train.epochs=2"], flags={"--num-samples": ("num_samples", 4)})
    with pytest.raises(ConfigError, match="--set train.epochs=3 differs"):
        check(overrides=["train.epochs=3"])
    with pytest.raises(ConfigError, match="--num-samples 5 contradicts the saved 4"):
        check(flags={"--num-samples": ("num_samples", 5)})
    with pytest.raises(ConfigError, match="--tracking-uri sqlite:///b.db contradicts"):
        check(flags={"--tracking-uri": ("tracking_uri", "sqlite:///b.db")})
    space.write_text("loss: {decode: {}}\n")
    with pytest.raises(ConfigError, match="is not the space file the search started with"):
        check()


def _saved_search(tmp_path: Path) -> tuple[Path, str]:
    """A saved search of ``quick.yaml`` in ``tmp_path/ray`` with settings to restore."""
    space = tmp_path / "quick.yaml"
    space.write_text("loss: {decode: {ce: {weight: {uniform: [0.1, 1.0]}}}}\n")
    run_dir = _saved(str(tmp_path / "ray"), "quick-1", space)
    saved = state.read_state(run_dir)
    saved.update(seed=7, scheduler="fifo", cpus_per_trial=1.0, study=state.STUDY_FILE)
    saved.update(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="e")
    state.write_state(run_dir, saved)
    state.write_text(run_dir, "experiment_state-2025.json", "{}")
    state.write_text(run_dir, state.STUDY_FILE, "")
    return space, run_dir


def test_resume_restores_every_saved_setting(tmp_path: Path) -> None:
    from tune_losses.tune.cli import build_parser, load_space
    from tune_losses.tune.resume import resume_command, resume_settings

    space, _ = _saved_search(tmp_path)
    args = build_parser().parse_args(
        ["--space", str(space), "--storage", str(tmp_path / "ray"), "--resume", "--seed", "7"]
    )
    search = resume_settings(args)
    exp = load_space(args).experiment
    assert exp.train.epochs == 2 and exp.search.num_samples == 4  # the saved --set, flags
    assert (exp.search.seed, exp.search.scheduler, exp.search.cpus_per_trial) == (7, "fifo", 1.0)
    assert exp.tracking.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    command = resume_command(args, search)
    for part in ("--scheduler fifo", "--seed 7", "--set train.epochs=2", "--resume quick-1"):
        assert part in command, command


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheduler", "asha"], "--scheduler asha contradicts the saved fifo"),
        (["--seed", "1"], "--seed 1 contradicts the saved 7"),
        (["--cpus-per-trial", "2"], "--cpus-per-trial 2.0 contradicts the saved 1.0"),
        (["--set", "train.epochs=3"], "--set train.epochs=3 differs"),
        ([], "experiment state (experiment_state-*.json) is missing"),
        ([], "its Optuna study"),
    ],
)
def test_a_resume_that_cannot_go_on_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    from tune_losses.search import main

    space, run_dir = _saved_search(tmp_path)
    if "experiment state" in message:
        (Path(run_dir) / "experiment_state-2025.json").unlink()
    if "Optuna study" in message:
        (Path(run_dir) / state.STUDY_FILE).unlink()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["--space", str(space), "--storage", str(tmp_path / "ray"), "--resume", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
