"""The confirm stage: after the search, its top-k configurations and every baseline trained
again at fresh seeds, concurrently on Ray, and scored at their end on one split.

One Ray trial per arm x seed (a second Tuner, FIFO: nothing pruned), logged by the same
:class:`~tune_losses.tune.callback.TrialLogger` as children of the search's parent, tagged
``confirm=<arm>`` and ``seed``. The seeds are fresh: the search trained each configuration at
its ``train.seed`` (and, with ``search.repeats``, the next ``repeats - 1``); the confirm
stage starts after the highest of those. The arms and seeds are saved in the run folder
before the Tuner starts, and the Tuner's own folder (``confirm/``) is restored on
``--resume``, so a search killed in this stage goes on where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from typing import Any

import yaml

from tune_losses.config import ConfigError
from tune_losses.space import SearchSpace
from tune_losses.tune import state as run_state

CONFIRM_DIR = "confirm"  # the confirm Tuner's folder inside the search's run folder
ARMS_FILE = "confirm_arms.json"  # the arms, seeds and split, written before it starts
STAGE_KEY = "stage"  # in the run folder's state: "confirm" once the search stage is done


def check_split(space: SearchSpace) -> None:
    """Refuse, in one line before anything is written, a ``search.confirm.split`` the data
    lacks or that holds a bad file: the split is validated here as the confirm runs will
    score it (whole, or ``max_train``/``max_val`` of the run's own splits), once (the data's
    stats cache keeps the result), not by every confirm run after its last epoch."""
    from tune_losses.data import DataError, build_split_loader

    confirm = space.experiment.search.confirm
    if confirm is None:
        return
    try:
        build_split_loader(space.experiment.data, confirm.split)
    except (DataError, OSError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{space.source}: search.confirm.split: {first}") from None


def score_metric(metric: str, split: str) -> str:
    """The metric a confirm run is scored by: ``val/mIoU`` on ``test`` is ``test/mIoU``."""
    return f"{split}/{metric.removeprefix('val/')}"


def fresh_seeds(
    first_seeds: Sequence[int], repeats: int, count: int, used: Sequence[int] = ()
) -> list[int]:
    """``count`` training seeds neither an arm (past ``max(first) + repeats - 1``) nor any
    trial of the search (``used``: e.g. a searched ``train.seed``) was trained at."""
    start = max([f + repeats for f in first_seeds] + [u + 1 for u in used], default=0)
    return list(range(start, start + count))


def pick_arms(
    trials: Sequence[Any], configs: dict[str, dict[str, Any]], top_k: int
) -> list[dict[str, Any]]:
    """The arms: the ``top_k`` finished configurations by the leaderboard (seed means; not
    baselines, not repeats), then every baseline's first run; each
    ``{label, trial_id, baseline, config}`` with the trial's Ray config (from ``configs``)."""
    from tune_losses.tune.intensify import BASELINE_KEY, REPEAT_KEY
    from tune_losses.tune.trainable import trial_values

    def usable(t: Any) -> bool:
        ok = t.status == "FINISHED" and math.isfinite(t.best) and t.trial_id in configs
        return ok and not t.repeat_of

    searched = [t for t in trials if usable(t) and not t.baseline][:top_k]
    baselines = [t for t in trials if usable(t) and t.baseline]
    arms = []
    for t in searched + baselines:
        config = {k: v for k, v in trial_values(configs[t.trial_id]).items() if k != REPEAT_KEY}
        label = f"base {config[BASELINE_KEY]}" if t.baseline else t.name.split()[0]
        arm = {"label": label, "trial_id": t.trial_id, "baseline": t.baseline, "config": config}
        arms.append(arm)
    return arms


def plan(
    space: SearchSpace, arms: list[dict[str, Any]], used: Sequence[int] = ()
) -> dict[str, Any]:
    """The confirm stage's plan (what :data:`ARMS_FILE` holds): arms, seeds (fresh: past
    ``used``, every seed the search trained at), split, score."""
    from tune_losses.tune.trainable import EXPERIMENT_KEY

    search = space.experiment.search
    confirm = search.confirm
    if confirm is None:
        raise ValueError("search.confirm is not set")
    firsts = [int(a["config"][EXPERIMENT_KEY]["train"]["seed"]) for a in arms]
    return {
        "arms": arms,
        "seeds": fresh_seeds(firsts, search.repeats, confirm.seeds, used),
        "split": confirm.split,
        "score": score_metric(search.objectives[0][0], confirm.split),
        "mode": search.objectives[0][1],
    }


def trial_configs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One Ray config per arm x seed: the arm's config at the seed, marked with its arm and
    the split its final weights are scored on."""
    from tune_losses.tune.trainable import CONFIRM_KEY, EXPERIMENT_KEY, SPLIT_KEY

    out = []
    for seed in doc["seeds"]:
        for arm in doc["arms"]:
            config = copy.deepcopy(arm["config"])
            config[EXPERIMENT_KEY]["train"]["seed"] = seed
            config[CONFIRM_KEY] = arm["label"]
            config[SPLIT_KEY] = doc["split"]
            out.append(config)
    return out


def save_plan(run_dir: str, state: dict[str, Any], doc: dict[str, Any]) -> None:
    """Write the plan, then mark the run folder's state as in the confirm stage."""
    run_state.write_text(run_dir, ARMS_FILE, json.dumps(doc, indent=1, default=str))
    state[STAGE_KEY] = "confirm"
    run_state.write_state(run_dir, state)


def load_plan(run_dir: str) -> dict[str, Any]:
    """The plan :func:`save_plan` wrote."""
    return json.loads(run_state.read_text(run_dir, ARMS_FILE))


def run_confirm(
    space: SearchSpace, run_dir: str, doc: dict[str, Any], tracker: Any, max_epochs: int
) -> tuple[Any, int]:
    """Train every arm x seed on Ray (the confirm Tuner, restored from ``run_dir/confirm``
    when it is there); returns Ray's results and how many trials it had to run."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune_losses.tune import ray_fixes
    from tune_losses.tune.callback import TrialLogger
    from tune_losses.tune.trainable import MEMBER_KEY, train_trial
    from tune_losses.tune.tuner import _short_dirname, restore_tuner

    search = space.experiment.search
    resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
    trainable = tune.with_resources(train_trial, resources)
    configs = trial_configs(doc)
    path = run_state.join(run_dir, CONFIRM_DIR)
    if run_state.has_file(path, run_state.TUNER_FILE):
        return restore_tuner(path, trainable).fit(), len(configs)
    logger = TrialLogger(tracker, max_epochs, metric=search.objectives[0][0], confirm=True)
    ray_fixes.apply()
    tuner = tune.Tuner(
        trainable,
        param_space={MEMBER_KEY: tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            scheduler=FIFOScheduler(),
            max_concurrent_trials=search.max_concurrent,
            trial_dirname_creator=_short_dirname,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=CONFIRM_DIR,
            storage_path=run_dir,
            callbacks=[logger],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    return tuner.fit(), len(configs)


def log_missing_scores(client: Any, parent_id: str, results: Any, split: str) -> int:
    """Log to each confirm run the ``<split>/...`` scores of its trial's last result that
    MLflow lacks: Ray's state holds every trial's last result, the child run may not (a
    driver killed between the two, or a run logged by a version that dropped them); returns
    how many runs were completed."""
    from tune_losses.tracking import TrackingError, find_trial_run, log_scores

    completed = 0
    for result in results:
        metrics = result.metrics or {}
        scores = {k: v for k, v in metrics.items() if k.startswith(f"{split}/")}
        if not scores or "trial_id" not in metrics:
            continue
        try:
            run = find_trial_run(client, parent_id, metrics["trial_id"])
        except TrackingError:
            continue
        missing = {k: v for k, v in scores.items() if k not in run.data.metrics}
        if missing:
            step = int(metrics.get("training_iteration", metrics.get("epoch", 0)))
            log_scores(client, run.info.run_id, missing, step)
            completed += 1
    return completed


def finished(results: Any, expected: int) -> bool:
    """Whether every confirm trial ended (terminated or errored), not stopped by Ctrl-C."""
    return len(results) >= expected and results.num_terminated + results.num_errors >= expected


def confirm_stage(
    space: SearchSpace, run_dir: str, state: dict[str, Any], tracker: Any, results: Any
) -> tuple[Any, dict[str, Any]] | None:
    """The confirm stage: planned from the leaderboard and saved in ``run_dir``, or its saved
    plan on ``--resume`` (``state`` says which); returns ``(outcome, plan)``, None when it
    was interrupted."""
    from tune_losses.tracking import ConfirmArm, confirm_outcome, load_confirm, load_trials
    from tune_losses.tune.intensify import BASELINE_KEY
    from tune_losses.tune.trainable import EXPERIMENT_KEY, trial_values

    if state.get(STAGE_KEY) == "confirm":
        doc = load_plan(run_dir)
    else:
        parent = tracker.client.get_run(tracker.parent_id)
        trials = load_trials(tracker.client, parent)
        configs = {(r.metrics or {}).get("trial_id"): r.config for r in results}
        used = [int(trial_values(r.config)[EXPERIMENT_KEY]["train"]["seed"]) for r in results]
        top_k = space.experiment.search.confirm.top_k
        doc = plan(space, pick_arms(trials, configs, top_k), used)
        save_plan(run_dir, state, doc)
    if not doc["arms"]:
        print("confirm stage: no configuration or baseline finished; nothing to confirm")
        return confirm_outcome([], doc["score"], doc["mode"]), doc
    print(
        f"confirm stage: training {len(doc['arms'])} arms at seeds {doc['seeds']} "
        f"on the {doc['split']} split",
        flush=True,
    )
    grid, expected = run_confirm(space, run_dir, doc, tracker, state["max_epochs"])
    if tracker.open_children() or not finished(grid, expected):
        return None
    log_missing_scores(tracker.client, tracker.parent_id, grid, doc["split"])
    parent = tracker.client.get_run(tracker.parent_id)
    arms = load_confirm(tracker.client, parent, doc["score"])
    found = {a.label for a in arms}
    for arm in doc["arms"]:  # an arm none of whose runs ended (never started): unscored
        if arm["label"] not in found:
            name = arm["config"].get(BASELINE_KEY, "") if arm["baseline"] else ""
            arms.append(ConfirmArm(arm["label"], str(name)))
    return confirm_outcome(arms, doc["score"], doc["mode"]), doc


def confirmed_best(
    confirmed: tuple[Any, dict[str, Any]], configs: dict[str, str], best: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The confirm stage's winner as ``best_config.yaml`` and ``best_trial``, its table as
    ``confirm.csv``, and the paired gain and interval as parent metrics."""
    from tune_losses.tracking import (
        CONFIRM_FILE,
        GAIN,
        GAIN_HIGH,
        GAIN_LOW,
        WINNER_MEAN,
        WINNER_TAG,
        confirm_rows,
        leaderboard_csv,
    )
    from tune_losses.tune.trainable import EXPERIMENT_KEY

    outcome, doc = confirmed
    configs = dict(configs)
    best = dict(best)
    configs[CONFIRM_FILE] = leaderboard_csv(confirm_rows(outcome))
    if outcome.winner is not None:
        arm = next(a for a in doc["arms"] if a["label"] == outcome.winner.label)
        configs["best_config.yaml"] = yaml.safe_dump(arm["config"][EXPERIMENT_KEY], sort_keys=False)
        best.update({"best_trial": arm["trial_id"], WINNER_TAG: arm["label"]})
        best[WINNER_MEAN] = outcome.winner.mean
    elif "best_config.yaml" not in configs:  # resumed in this stage: the search's best
        arm = next((a for a in doc["arms"] if a["trial_id"] == best.get("best_trial")), None)
        if arm is not None:
            text = yaml.safe_dump(arm["config"][EXPERIMENT_KEY], sort_keys=False)
            configs["best_config.yaml"] = text
    if outcome.gain is not None:
        best.update(dict(zip((GAIN, GAIN_LOW, GAIN_HIGH), outcome.gain, strict=True)))
    return configs, best
