"""A search's child runs, one per trial: opened, logged epoch by epoch, tagged, ended."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunStatus

from tune_losses.tracking.names import (
    BASELINE_TAG,
    CLONED_TAG,
    CONFIRM_TAG,
    DEVICE_TAG,
    EPOCHS_TAG,
    ERROR_REASON_TAG,
    ERROR_TAG,
    HOSTNAME_TAG,
    LINEAGE_TAG,
    NODE_IP_TAG,
    PARENT_TAG,
    PREDICTIONS,
    REPEAT_TAG,
    STEP_METRIC,
    STOP_TAG,
    TRIAL_CONFIG,
    TRIAL_TAG,
    error_reason,
    stop_reason,
    trial_params,
)
from tune_losses.tracking.writers import _Writer


class ChildRuns(_Writer):
    """The child runs of one search, by Ray trial id (the parent's side:
    :class:`~tune_losses.tracking.search_tracker.SearchTracker`)."""

    def __init__(self, uri: str, experiment: str) -> None:
        super().__init__(uri, experiment)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}
        self.repeats: set[str] = set()  # trial ids of runs with no trial number: repeats at
        # further seeds, baselines, confirm runs
        self.confirms: set[str] = set()  # trial ids of the confirm stage's runs
        self.logged_through: dict[str, int] = {}  # trial id -> last step logged

    def _parent(self) -> str:
        if self.parent_id is None:
            raise RuntimeError("SearchTracker.start() was not called")
        return self.parent_id

    # ------------------------------------------------------------------ children
    def retire(self, trial_ids: Sequence[str]) -> list[str]:
        """Delete (MLflow soft delete) the child runs of trials the resumed search does not
        know: started after Ray's last snapshot, their Optuna trials are rerun by new Ray
        trials with new children. Returns the deleted runs' ids."""
        gone = [self.children.pop(t) for t in trial_ids if t in self.children]
        for run_id in gone:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")
            self.client.delete_run(run_id)
        return gone

    def next_trial_number(self) -> int:
        """The number of a configuration not seen yet: 1 + the child runs this search has
        (resumed searches included; repeats at further seeds, baselines and confirm runs not
        counted), in the order trials start."""
        return len(self.children.keys() - self.repeats) + 1

    def run_name(self, trial_id: str) -> str:
        """The name of a trial's child run (its id when it has none)."""
        run_id = self.children.get(trial_id)
        return self.client.get_run(run_id).info.run_name or run_id if run_id else trial_id

    def trial_started(
        self,
        trial_id: str,
        name: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Open the trial's child run (or reopen it after a restore): params and config.

        ``tags`` (``repeat_of`` for a contender's repeat, ``baseline``, ``confirm`` and
        ``seed``: runs without a trial number) are set as the run is created, in the same
        call: a driver killed right after cannot leave a confirm run that reads as a trial."""
        tags = dict(tags or {})
        if {REPEAT_TAG, BASELINE_TAG, CONFIRM_TAG} & tags.keys():
            self.repeats.add(trial_id)
        if CONFIRM_TAG in tags:
            self.confirms.add(trial_id)
        if trial_id in self.children:  # restored or retried: same run continues
            run_id = self.children[trial_id]
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
            self._complete_params(run_id, config)
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={**tags, PARENT_TAG: self._parent(), TRIAL_TAG: trial_id},
        )
        run_id = run.info.run_id
        self.children[trial_id] = run_id
        self.logged_through[trial_id] = 0
        self.log_params(run_id, trial_params(config))
        text = yaml.safe_dump(config.get("experiment", {}), sort_keys=False)
        self.client.log_text(run_id, text, TRIAL_CONFIG)

    def log_predictions(self, trial_id: str, png: str | Path) -> None:
        """Attach the best epoch's predictions picture to a trial's child run as
        :data:`PREDICTIONS`, whatever the file is called."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / PREDICTIONS
            target.write_bytes(Path(png).read_bytes())
            self.client.log_artifact(run_id, str(target))

    def _complete_params(self, run_id: str, config: Mapping[str, Any]) -> None:
        """Log the params an adopted child lacks (its search was killed before they were
        all written); MLflow refuses a param logged again with another value."""
        logged = self.client.get_run(run_id).data.params
        missing = {k: v for k, v in trial_params(config).items() if k not in logged}
        if not missing:
            return
        self.log_params(run_id, missing)
        if not any(a.path == TRIAL_CONFIG for a in self.client.list_artifacts(run_id)):
            text = yaml.safe_dump(config.get("experiment", {}), sort_keys=False)
            self.client.log_text(run_id, text, TRIAL_CONFIG)

    def _last_step(self, trial_id: str, run_id: str) -> int:
        """The last step logged for a trial: remembered, or read back from MLflow (the
        ``epoch`` history) for a child adopted on resume."""
        if trial_id not in self.logged_through:
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            self.logged_through[trial_id] = max((int(m.step) for m in history), default=0)
        return self.logged_through[trial_id]

    def trial_result(self, trial_id: str, result: Mapping[str, Any], step: int) -> None:
        """Log one reported epoch of a trial at ``step``, unless that step is logged already.

        A trial resumed from a checkpoint older than its last report (the driver was
        killed, a worker lost) reruns those epochs exactly; MLflow would keep both values,
        so one value per step stays in the store: the first."""
        run_id = self.children.get(trial_id)
        if run_id is None or step <= self._last_step(trial_id, run_id):
            return
        ts = int(1000 * float(result.get("timestamp", time.time())))
        self.log_metrics(run_id, result, step, ts)
        self.logged_through[trial_id] = step

    def trial_placed(self, trial_id: str, *, node_ip: str, hostname: str, device: str) -> None:
        """Tag the trial's child run with where it (last) ran: node IP, host, torch device."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        tags = {NODE_IP_TAG: node_ip, HOSTNAME_TAG: hostname, DEVICE_TAG: device}
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def trial_cloned(self, trial_id: str, donor: str) -> None:
        """Record that PBT restarted the trial from ``donor`` (``"<trial>@<epoch>"``)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        lineage = self.client.get_run(run_id).data.tags.get(LINEAGE_TAG)
        self.client.set_tag(run_id, CLONED_TAG, donor)
        self.client.set_tag(run_id, LINEAGE_TAG, f"{lineage},{donor}" if lineage else donor)

    def trial_ended(
        self,
        trial_id: str,
        *,
        failed: bool,
        last_result: Mapping[str, Any],
        max_epochs: int,
        summary: Mapping[str, Any] | None,
        error: str | None = None,
    ) -> str:
        """Close a child run: FINISHED (tagged how it stopped) or FAILED with the error;
        returns how it stopped (completed, asha, early_stopping, error)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return "unknown"
        reason = stop_reason(last_result, max_epochs, failed)
        self.client.set_tag(run_id, STOP_TAG, reason)
        self.client.set_tag(run_id, EPOCHS_TAG, str(int(last_result.get("epoch", 0))))
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        if failed:
            self.client.set_tag(run_id, ERROR_REASON_TAG, error_reason(error))
        else:  # a reopened child that failed before ended well this time: no stale error
            stale = self.client.get_run(run_id).data.tags
            for tag in (ERROR_TAG, ERROR_REASON_TAG):
                if tag in stale:
                    self.client.delete_tag(run_id, tag)
        if summary is not None:
            self.log_best_epoch(run_id, summary)
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status)
        return reason
