"""The search's writer: the parent run and one child run per trial, never left RUNNING."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tune_losses.tracking.child_runs import ChildRuns
from tune_losses.tracking.names import (
    BASELINE_TAG,
    BEST_CONFIG,
    CONFIRM_TAG,
    KIND_TAG,
    LEADERBOARD,
    NOTE_TAG,
    PARENT_TAG,
    REPEAT_TAG,
    TRIAL_TAG,
    VERSION_TAG,
)
from tune_losses.tracking.readers import TrialRecord, search_all
from tune_losses.tracking.story import search_story, trial_counts


class SearchTracker(ChildRuns):
    """Owns the parent run and every child run of one search; never leaves one RUNNING."""

    # ------------------------------------------------------------------ parent
    def start(self, run_name: str, params: Mapping[str, Any], space_file: Path) -> str:
        """Open the search's parent run with its settings and the space file."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={KIND_TAG: "search"}
        )
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        self.client.log_artifact(self.parent_id, str(space_file), "space")
        return self.parent_id

    def reopen(self, parent_id: str) -> None:
        """Continue a resumed search's parent run and adopt its existing children."""
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        runs = search_all(self.client, self.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")
        self.children = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs}
        unnumbered = (REPEAT_TAG, BASELINE_TAG, CONFIRM_TAG)
        self.repeats = {
            r.data.tags[TRIAL_TAG] for r in runs if any(t in r.data.tags for t in unnumbered)
        }
        self.confirms = {r.data.tags[TRIAL_TAG] for r in runs if CONFIRM_TAG in r.data.tags}

    def finish(
        self, leaderboard_csv: str, best_config_yaml: str | None, best: Mapping[str, Any]
    ) -> None:
        """Attach the leaderboard and best config to the parent and close it FINISHED."""
        pid = self._parent()
        self.client.log_text(pid, leaderboard_csv, LEADERBOARD)
        if best_config_yaml is not None:
            self.client.log_text(pid, best_config_yaml, BEST_CONFIG)
        logged = self.client.get_run(pid).data.metrics
        for key, value in best.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._log_once(pid, key, float(value), logged)
            else:
                self.client.set_tag(pid, key, str(value))
        self.client.set_terminated(pid, "FINISHED")

    def _log_once(self, run_id: str, key: str, value: float, logged: Mapping[str, float]) -> None:
        """Log a summary metric at step 0 unless the run holds it already: a summary redone
        on ``--resume`` (the driver was killed during it) adds no second value."""
        if key not in logged:
            self.client.log_metric(run_id, key, value)

    def attach(self, texts: Mapping[str, str]) -> None:
        """Log text files on the parent run (``pareto.csv``, one best config per member)."""
        for path, text in texts.items():
            self.client.log_text(self._parent(), text, path)

    def log_environment(self, versions: Mapping[str, str], commit: Mapping[str, str]) -> None:
        """Tag the parent with package versions (``version.torch`` ...) and the project's
        git commit (:func:`git_tags`), so a search can be traced to the code that ran it."""
        tags = {VERSION_TAG.format(name): value for name, value in versions.items()}
        tags.update(commit)
        for key, value in tags.items():
            self.client.set_tag(self._parent(), key, value)

    def tell_story(
        self,
        trials: Sequence[TrialRecord],
        reproduce: str,
        retrain: str,
        notes: Sequence[str] = (),
        counts: Mapping[str, float] | None = None,
        sections: Sequence[str] = (),
    ) -> None:
        """The parent's description (:func:`search_story`, with ``notes``) and its trial
        counts (:func:`trial_counts`, plus ``counts``), so the runs table and run page say
        how the search went; ``sections``: markdown lines after the top trials."""
        pid = self._parent()
        story = search_story(
            trials,
            self.experiment_id,
            reproduce=reproduce,
            retrain=retrain,
            notes=notes,
            sections=sections,
        )
        self.client.set_tag(pid, NOTE_TAG, story)
        logged = self.client.get_run(pid).data.metrics
        for key, value in {**trial_counts(trials), **(counts or {})}.items():
            self._log_once(pid, key, value, logged)

    def open_children(self) -> list[str]:
        """Child runs of this search still RUNNING (trials interrupted mid-way)."""
        if self.parent_id is None:
            return []
        query = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and attributes.status = 'RUNNING'"
        return [r.info.run_id for r in search_all(self.client, self.experiment_id, query)]

    def abort(self, status: str = "KILLED") -> None:
        """End every open child run and the parent with ``status`` (FAILED or KILLED)."""
        for run_id in self.open_children():
            self.client.set_terminated(run_id, status)
        if self.parent_id is not None:
            if self.client.get_run(self.parent_id).info.status == "RUNNING":
                self.client.set_terminated(self.parent_id, status)
