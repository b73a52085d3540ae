"""Docs that run: every ``python -m tune_losses...`` command that the README's code blocks and
the comments of the space and config files show, run in a scratch copy of the repository
(searches as dry runs, trainings for one epoch on a few images, the report on a store written
by the tracking writers, evaluations on two images of a run trained so), so the docs cannot
drift from the code."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from test_data import real_data

from tune_losses import evaluate, report, search, train
from tune_losses.tiny import tiny_experiment
from tune_losses.tracking import SearchTracker

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m tune_losses."
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
TINY_TRAIN = ["train.epochs=1", "data.max_train=4", "data.max_val=2", "data.batch_size=2"]


def _commands(lines: list[str]) -> list[str]:
    """The commands among ``lines``, backslash continuations joined, ``# comments`` dropped."""
    out: list[str] = []
    joined = ""
    for line in lines:
        if joined or line.startswith(COMMAND):
            joined += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                out.append(shlex.join(shlex.split(joined, comments=True)))
                joined = ""
    return out


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` of every command in README code blocks and in YAML comments."""
    found: list[tuple[str, str]] = []
    for block in FENCE.findall((ROOT / "README.md").read_text()):
        lines = [line.strip() for line in block.splitlines()]
        found += [("README.md", c) for c in _commands(lines)]
    for path in sorted([*ROOT.glob("search_spaces/*.yaml"), *ROOT.glob("configs/*.yaml")]):
        text = path.read_text().splitlines()
        lines = [line.lstrip("#").strip() for line in text if line.startswith("#")]
        found += [(str(path.relative_to(ROOT)), c) for c in _commands(lines)]
    return found


DOCUMENTED = documented_commands()


def _param(where: str, command: str) -> pytest.ParameterSet:
    slow = "camvid" in command  # real data: a resnet18 and the CamVid files, ~30 s each
    return pytest.param(command, id=f"{where}: {command}", marks=[pytest.mark.slow] * slow)


def test_the_docs_show_commands_of_every_kind() -> None:
    kinds = {c.split()[2] for _, c in DOCUMENTED}
    kinds_shown = {"search", "report", "train", "evaluate"}
    assert kinds == {f"tune_losses.{k}" for k in kinds_shown}, DOCUMENTED
    assert any(where.startswith("search_spaces/") for where, _ in DOCUMENTED)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch checkout: the space and config files, ``../shared`` beside it and a finished
    search's ``best_config.yaml``; the commands run (and write) here."""
    here = tmp_path / "repo"
    here.mkdir()
    for name in ("search_spaces", "configs"):
        (here / name).symlink_to(ROOT / name)
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    best = here / "ray_results" / "search" / "best_config.yaml"
    best.parent.mkdir(parents=True)
    best.write_text(yaml.safe_dump(tiny_experiment()))
    monkeypatch.chdir(here)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # restored after --address sets it
    return here


def write_store(here: Path) -> None:
    """A finished two-trial search in ``here/mlruns.db``, written by the tracking writers
    (absolute URI: MLflow caches a store by its URI, and the tests change folder)."""
    best = here / "ray_results" / "search" / "best_config.yaml"
    tracker = SearchTracker(f"sqlite:///{here / 'mlruns.db'}", "tune_losses")
    tracker.start("search", {"search.metric": "val/mIoU"}, best)
    for i, weight in enumerate((0.2, 0.8)):
        config = {"experiment": tiny_experiment(), "loss.decode.dice.weight": weight}
        tracker.trial_started(f"t{i}", f"trial_{i}", config)
        for epoch in (1, 2):
            result = {"epoch": epoch, "val/mIoU": 10.0 * epoch + weight, "timestamp": epoch}
            tracker.trial_result(f"t{i}", result, epoch)
        tracker.trial_ended(f"t{i}", failed=False, last_result=result, max_epochs=2, summary=None)
    tracker.finish("trial\n", None, {"best_val_mIoU": 20.8})


def write_scored_folders(here: Path, args: list[str]) -> None:
    """What an evaluate command scores: the ``--run`` folder, trained for one epoch on a few
    images (from ``configs/camvid_unet.yaml`` when it names CamVid, as the README's train
    command does, else the tiny experiment) with ``--mlflow``; for ``--search``, a trial
    folder beside the scratch ``best_config.yaml``, its checkpoint trained the same way."""
    store = ["--set", f"tracking.uri=sqlite:///{here / 'mlruns.db'}", "--mlflow"]
    tiny = [f"--set={s}" for s in TINY_TRAIN]
    if "--run" in args:
        run = Path(args[args.index("--run") + 1])
        config = here / "configs" / "camvid_unet.yaml"
        if "camvid" not in run.name:
            config = here / "tiny.yaml"
            config.write_text(yaml.safe_dump(tiny_experiment()))
        assert train.main(["--config", str(config), "--out", str(run), *tiny, *store]) == 0
    else:
        search = Path(args[args.index("--search") + 1])
        best = search / "best_config.yaml"
        trial = search / "train_trial_0001"
        checkpoint = trial / "checkpoint_000000"
        assert train.main(["--config", str(best), "--out", str(checkpoint), *tiny]) == 0
        experiment = yaml.safe_load(best.read_text())
        (trial / "params.json").write_text(json.dumps({"experiment": experiment}))


@pytest.mark.parametrize("command", [_param(*c) for c in DOCUMENTED])
def test_documented_command_runs(repo: Path, command: str, capsys) -> None:
    if "camvid" in command:
        real_data("camvid")
    args = shlex.split(command.replace("<search>", "search").replace("[--mlflow]", "--mlflow"))
    module, args = args[2], args[3:]
    if module == "tune_losses.search":
        rc = search.main([*args, *(["--dry-run"] * ("--dry-run" not in args))])
    elif module == "tune_losses.train":
        rc = train.main([*args, *(f"--set={s}" for s in TINY_TRAIN)])
    elif module == "tune_losses.evaluate":
        write_scored_folders(repo, args)
        rc = evaluate.main([*args, "--limit", "2"])
    else:
        write_store(repo)
        # a team's server (https://...) is not reachable from a test: read the scratch store
        store = f"sqlite:///{repo / 'mlruns.db'}"
        args = [store if a.startswith(("http://", "https://")) else a for a in args]
        rc = report.main(args)
    assert rc == 0, capsys.readouterr().err[-2000:]
