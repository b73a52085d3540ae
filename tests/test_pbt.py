"""PBT applies what it says and its winner replays exactly, at the engine level (no Ray).

An exploit is what ``tune/trainable.py`` does with a cloned checkpoint: a :class:`Trainer`
built from the member's mutated experiment ``load``s the donor's state. A lineage is a
chain of such exploits; its replay is ``tune_losses.train`` on :func:`learned_experiment`.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune_losses import train
from tune_losses.config import ConfigError, validate_experiment
from tune_losses.engine import Trainer
from tune_losses.space import SearchSpace
from tune_losses.tiny import tiny_experiment
from tune_losses.tune.pbt import learned_experiment, make_pbt


def _run(raw: dict[str, Any], epochs: int, state: Path | None = None) -> Trainer:
    """A Trainer of ``raw`` that loads ``state`` (an exploit) if given, then runs ``epochs``."""
    trainer = Trainer(validate_experiment(raw))
    if state is not None:
        trainer.load(state)
    list(itertools.islice(trainer.epochs(), epochs))
    return trainer


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_a_mutated_lr_and_weight_decay_take_effect_after_an_exploit(
    tiny: dict, tmp_path: Path, schedule: str
) -> None:
    """The member loads a donor's optimiser state (donor's LR, one-cycle peaks, decay) and
    still trains at its own LR, on the donor's schedule shape rescaled: the LRs of epochs
    3-4 are those of a run that had the new LR from the start; its decay is its own."""
    tiny["train"].update(epochs=4, lr=0.004, weight_decay=1e-4, lr_schedule=schedule)
    donor = _run(tiny, 2)
    donor.save(tmp_path)
    mutated = copy.deepcopy(tiny)
    mutated["train"].update(lr=0.0065, weight_decay=0.03)
    member = _run(mutated, 2, state=tmp_path)
    fresh = _run(mutated, 4)  # the LR path of the new peak, run from the start
    half = 2 * member.steps_per_epoch
    lrs = member.trace["lr"]
    assert len(lrs) == 2 * half and lrs[:half] == donor.trace["lr"]  # the donor's epochs
    assert lrs[half:] == pytest.approx(fresh.trace["lr"][half:], rel=1e-9, abs=0)
    if schedule != "constant":  # a schedule that moves: the donor's own path went elsewhere
        continued = _run(tiny, 2, state=tmp_path)
        assert continued.trace["lr"][half:] != pytest.approx(lrs[half:], rel=1e-3)
    decays = [g["weight_decay"] for g in member.optimizer.param_groups]
    assert decays == [0.03], "the donor's decay 1e-4 came back with its optimiser state"
    assert [(p["from_epoch"], p["train"]["lr"]) for p in member.lineage] == [
        (1, 0.004),
        (3, 0.0065),
    ]


def _lineage(tiny: dict, tmp_path: Path) -> tuple[dict[str, Any], Trainer]:
    """A winner of three phases over a 6-epoch schedule: A (epochs 1-2), B cloned from A@2
    (epochs 3-4), W cloned from B@4, which early-stops after epoch 5. Each phase mutates the
    LR, a ``linear`` aux weight and focal's gamma; the LR schedule is one-cycle."""
    tiny["train"].update(epochs=6, lr=0.004, lr_schedule="onecycle")
    tiny["train"]["early_stopping"] = {"patience": None}
    tiny["loss"]["aux"]["ce"]["weight"] = {"schedule": "linear", "start": 0.8, "end": 0.2}
    tiny["loss"]["decode"]["focal"] = {"weight": 0.5, "gamma": 2.0}
    a = tiny
    b = copy.deepcopy(a)
    b["train"]["lr"] = 0.0048
    b["loss"]["aux"]["ce"]["weight"].update(start=0.64, end=0.24)
    b["loss"]["decode"]["focal"]["gamma"] = 1.6
    w = copy.deepcopy(b)
    w["train"].update(lr=0.00384, weight_decay=0.02)
    w["train"]["early_stopping"] = {"patience": 1, "min_delta": 1000.0}  # stops at once
    w["loss"]["aux"]["ce"]["weight"].update(start=0.9, end=0.288)
    w["loss"]["decode"]["focal"]["gamma"] = 2.4
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run(a, 2).save(tmp_path / "a")
    _run(b, 2, state=tmp_path / "a").save(tmp_path / "b")
    winner = _run(w, 6, state=tmp_path / "b")
    return w, winner


def test_the_learned_lineage_replays_step_for_step(tiny: dict, tmp_path: Path) -> None:
    """``best_config.yaml`` of a winner that early-stopped after 5 of 6 epochs: the replay
    (``python -m tune_losses.train``) runs 5 epochs of the 6-epoch one-cycle path and logs,
    at every step, the LR and each weight the winner's lineage recorded while it ran."""
    w, winner = _lineage(tiny, tmp_path)
    summary = winner.summary()
    assert summary["epochs_run"] == 5 and summary["stopped_early"]
    assert [p["from_epoch"] for p in summary["lineage"]] == [1, 3, 5]
    config = learned_experiment(validate_experiment(w).model_dump(mode="json"), summary)
    assert config["train"]["epochs"] == 6 and config["train"]["stop_after"] == 5
    assert [p["loss"]["decode"]["focal"]["gamma"] for p in config["phases"]] == [1.6, 2.4]
    path = tmp_path / "best_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    assert train.main(["--config", str(path), "--out", str(tmp_path / "replay")]) == 0
    replay = json.loads((tmp_path / "replay" / "best.json").read_text())
    recorded = summary["steps"]
    assert (
        set(replay["steps"])
        == set(recorded)
        == {
            "lr",
            "weight/decode/ce",
            "weight/decode/focal",
            "weight/aux/ce",
        }
    )
    steps = 5 * winner.steps_per_epoch
    for key, values in recorded.items():
        assert len(values) == len(replay["steps"][key]) == steps
        assert replay["steps"][key] == pytest.approx(values, rel=1e-6, abs=0), key
    aux = recorded["weight/aux/ce"]
    assert len(set(aux)) == steps, "the linear weight varies within each epoch"
    assert [p["loss"] for p in replay["lineage"]] == [p["loss"] for p in summary["lineage"]]


def test_pbt_refuses_a_marker_that_cannot_change_mid_run() -> None:
    raw = tiny_experiment(search={"scheduler": "pbt"})
    raw["train"]["epochs"] = {"int": [2, 4]}
    raw["loss"]["aux"]["ce"]["weight"] = {"uniform": [0.1, 1.0]}
    space = SearchSpace(raw)
    with pytest.raises(ConfigError, match=r"only loss\.\* and train\.\{lr,.*: train\.epochs"):
        make_pbt(space, space.variants[0].search)
