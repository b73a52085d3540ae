"""Bad input, up front: each is one line naming the file and the field, exit 2, nothing
written, in ``search`` (dry run or not) and in ``train``; meaningful input works."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune_losses.config import ConfigError
from tune_losses.search import main as search_main
from tune_losses.space import SearchSpace
from tune_losses.tiny import tiny_experiment
from tune_losses.train import main as train_main
from tune_losses.tune import cli
from tune_losses.tune.run import check_resources

DECODE_CE = {"ce": {"weight": 1.0}}
STEP = {"schedule": "step", "values": [1.0, 0.5, 0.2], "milestones": [0.7, 0.3]}
ALL_OFF = {"choice": {"ce": DECODE_CE, "off": {"ce": None}}}

# name -> (sections over the tiny experiment, the field the one line names)
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "term_key": ({"loss": {"decode": {"ce+dice": {"term": "ce"}}}}, "loss.decode.ce+dice: "),
    "class_name": ({"data": {"classes": ["road", "car (parked)"]}}, "data.classes: class 'car"),
    "metric_class": ({"search": {"metric": "val/IoU/blobb"}}, "did you mean 'val/IoU/blob'"),
    "zero_head": (
        {"loss": {"decode": {"ce": {"weight": 0.0}, "dice": {"weight": 0}}}},
        "loss.decode: every term's weight is 0",
    ),
    "inf_weight": ({"loss": {"decode": {"ce": {"weight": float("inf")}}}}, "ce.weight: "),
    "negative_class_weights": (
        {"loss": {"decode": {"ce": {"class_weights": [1.0, -1.0, 1.0, 1.0]}}}},
        "loss.decode.ce.class_weights: class weights must be finite and >= 0",
    ),
    "zero_class_weights": (
        {"loss": {"decode": {"ce": {"class_weights": [0, 0, 0, 0]}}}},
        "loss.decode.ce.class_weights: class weights are all 0",
    ),
    "milestones": ({"loss": {"decode": {"ce": {"weight": STEP}}}}, "milestones must increase"),
    # a list of modes for one metric: Ray took it and failed once the parent run was open
    "mode_list": (
        {"search": {"metric": "train/loss", "mode": ["min"]}},
        "search: mode: a list (min) goes with a list of metrics",
    ),
}
# only a search space can hold markers
BAD_SPACE: dict[str, tuple[dict[str, Any], str]] = {
    "uniform_epochs": ({"train": {"epochs": {"uniform": [2, 4]}}}, "train.epochs: takes an int"),
    "uniform_batch": ({"data": {"batch_size": {"uniform": [2, 8]}}}, "data.batch_size: takes"),
    # no branch the space check walks switches both off; together they leave no term
    "no_term": (
        {"loss": {"decode": ALL_OFF, "aux": {"ce": {"choice": [{"weight": 0.4}, None]}}}},
        "loss: choosing loss.aux.ce: none, loss.decode: off switches every term off",
    ),
    "label": ({"loss": {"decode": {"choice": {"ce+x": DECODE_CE}}}}, "loss.decode: option 'ce+x'"),
    # a baseline is built and checked on one batch like the space: 2 weights, 4 classes
    "baseline": (
        {"search": {"baselines": {"wce": {"decode": {"ce": {"class_weights": [1.0, 2.0]}}}}}},
        "search.baselines.wce: ",
    ),
    "baseline_pareto": (
        {
            "search": {
                "metric": ["val/mIoU", "val/boundary_IoU"],
                "mode": ["max", "max"],
                "scheduler": "fifo",
                "baselines": {"ce": {"decode": DECODE_CE}},
            }
        },
        "baselines: need one metric",
    ),
    "confirm_marker": (
        {"search": {"confirm": {"choice": [{"top_k": 1}, {"top_k": 2}]}}},
        "search.confirm: no search markers here",
    ),
}


def write(path: Path, sections: dict[str, Any]) -> Path:
    """The tiny experiment with ``sections`` merged in (one level deep), as YAML."""
    raw = tiny_experiment()
    for key, value in sections.items():
        raw[key] = value if key == "loss" else {**raw.get(key, {}), **value}
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_one_line(
    capsys: pytest.CaptureFixture[str], rc: int, path: Path, field: str, tmp: Path
) -> None:
    """Exit 2, one line ``error: <file>: ...<field>...``, and nothing written under ``tmp``."""
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith(f"error: {path}: ") and field in err and "\n" not in err, err
    assert sorted(p.name for p in tmp.iterdir()) == [path.name]


def search(path: Path, dry: bool) -> int:
    return search_main(["--space", str(path), *(["--dry-run"] if dry else [])])


def train(path: Path) -> int:
    return train_main(["--config", str(path), "--out", str(path.parent / "run")])


RUNNERS: dict[str, Callable[[Path], int]] = {
    "search_dry": lambda p: search(p, True),
    "search": lambda p: search(p, False),
    "train": train,
}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder: default MLflow store, ray_results and runs would land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(
    here: Path, capsys: pytest.CaptureFixture[str], case: str, runner: str
) -> None:
    sections, field = BAD[case]
    path = write(here / "bad.yaml", sections)
    assert_one_line(capsys, RUNNERS[runner](path), path, field, here)


@pytest.mark.parametrize("dry", [True, False], ids=["search_dry", "search"])
@pytest.mark.parametrize("case", BAD_SPACE)
def test_bad_space_is_one_line_and_writes_nothing(
    here: Path, capsys: pytest.CaptureFixture[str], case: str, dry: bool
) -> None:
    sections, field = BAD_SPACE[case]
    path = write(here / "bad.yaml", sections)
    assert_one_line(capsys, search(path, dry), path, field, here)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_non_utf8_file_is_named(
    here: Path, capsys: pytest.CaptureFixture[str], runner: str
) -> None:
    path = here / "latin1.yaml"
    path.write_bytes("# café\ntrain: {epochs: 2}\n".encode("latin-1"))
    assert_one_line(capsys, RUNNERS[runner](path), path, "not UTF-8 text", here)


@pytest.mark.parametrize("dry", [True, False], ids=["search_dry", "search"])
def test_more_gpus_per_trial_than_the_machine_has(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, dry: bool
) -> None:
    monkeypatch.setattr(cli.torch.cuda, "device_count", lambda: 0)
    path = write(here / "space.yaml", {})
    rc = search_main(["--space", str(path), "--gpus-per-trial", "1", *(["--dry-run"] * dry)])
    assert_one_line(capsys, rc, path, "search.gpus_per_trial: 1 GPU per trial", here)


def test_resources_are_checked_against_the_cluster() -> None:
    """What ``_start_ray`` checks right after ``ray.init``, on ``ray.cluster_resources()``."""
    space = SearchSpace(tiny_experiment(search={"cpus_per_trial": 4}), source="s.yaml")
    with pytest.raises(ConfigError, match=r"^s.yaml: search.cpus_per_trial: 4 CPU per trial"):
        check_resources(space, {"CPU": 2.0, "GPU": 0.0}, "the Ray cluster")
    check_resources(space, {"CPU": 8.0, "GPU": 0.0}, "the Ray cluster")


def test_classes_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["road", "a+b"]}))
    raw = tiny_experiment(data={"format": "folders", "root": str(tmp_path)})
    with pytest.raises(ValueError, match=r"classes.json: class 'a\+b': .* cannot be stored"):
        cli.preflight(SearchSpace(raw).variants)


@pytest.mark.parametrize(
    "sections",
    [
        # a choice that switches a head's only term off: that head is simply off
        {"loss": {"decode": DECODE_CE, "aux": {"choice": {"ce": {"ce": {}}, "off": {"ce": None}}}}},
        # class names MLflow stores: spaces, dots, dashes, slashes
        {"data": {"classes": ["traffic light", "v1.2", "a-b", "sky/clouds"]}},
        # one term at 0 in a head with another term is fine (ce_dice_beta's ends)
        {"loss": {"decode": {"ce": {"weight": 0.0}, "dice": {"weight": 1.0}}}},
    ],
    ids=["head_off", "class_names", "one_zero_weight"],
)
def test_meaningful_input_works(
    here: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, Any]
) -> None:
    path = write(here / "space.yaml", sections)
    assert search(path, True) == 0, capsys.readouterr().err
