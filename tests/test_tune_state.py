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
