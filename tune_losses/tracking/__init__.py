"""MLflow layout of a search and of a training run: names, writers, readers, leaderboard.

One parent run per search (tagged ``tune_losses.kind=search``), one child run per trial
(tagged ``mlflow.parentRunId`` and ``ray.trial_id``). A child holds the sampled values
and the resolved config as flat params (``loss.aux.ce.weight.start``), per-epoch metrics
(``val/mIoU``, ``train/loss``, each weighted part, each effective weight),
``best_val_mIoU``, ``trial_config.yaml`` and the best epoch's confusion matrix. The parent
holds the space file, the leaderboard and the best config.

This package is the only owner of those names. It never imports Ray: the search's Tune
callback (:mod:`tune_losses.tune.callback`) adapts trial events to :class:`SearchTracker`,
and :mod:`tune_losses.report` reads the same layout back through :func:`load_trials`.

One job a module, everything re-exported here:

- :mod:`~tune_losses.tracking.names`: tag, metric and file names; a trial's params, run
  name, metrics and how it ended;
- :mod:`~tune_losses.tracking.writers`: a client on one experiment, :class:`RunLogger`;
- :mod:`~tune_losses.tracking.search_tracker`: :class:`SearchTracker`, the parent run, on
  :mod:`~tune_losses.tracking.child_runs` (a child run per trial);
- :mod:`~tune_losses.tracking.provenance`: package versions and the git commit;
- :mod:`~tune_losses.tracking.readers`: the store, the parent, :func:`load_trials`;
- :mod:`~tune_losses.tracking.leaderboard`: ranking, Pareto front, rows, CSV, short names;
- :mod:`~tune_losses.tracking.story`: the parent's markdown description and trial counts;
- :mod:`~tune_losses.tracking.confirm`: the confirm stage's arms, winner and paired gain.
"""

from __future__ import annotations

from tune_losses.config import best_metric_name  # best_<metric>: a metric name of the layout
from tune_losses.tracking.confirm import (
    GAIN,
    GAIN_HIGH,
    GAIN_LOW,
    WINNER_TAG,
    ConfirmArm,
    ConfirmOutcome,
    confirm_outcome,
    confirm_rows,
    confirm_story,
    confirm_verdict,
    load_confirm,
    paired_interval,
    search_confirm,
)
from tune_losses.tracking.leaderboard import (
    LEADERBOARD_COLUMNS,
    best_label,
    format_best,
    leaderboard_csv,
    leaderboard_rows,
    pareto_front,
    ranking,
    searched_params,
    short_names,
    short_value,
    varying_params,
)
from tune_losses.tracking.names import (
    BASELINE_TAG,
    BEST_CONFIG,
    BEST_METRIC,
    CHOICE_SUFFIXES,
    CLONED_TAG,
    CONFIRM_FILE,
    CONFIRM_TAG,
    CURVE_METRIC,
    DEVICE_TAG,
    EPOCHS_REPEATED,
    EPOCHS_SPENT,
    EPOCHS_TAG,
    ERROR_REASON_TAG,
    ERROR_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    HOSTNAME_TAG,
    KIND_TAG,
    LEADERBOARD,
    LINEAGE_FILE,
    LINEAGE_TAG,
    NODE_IP_TAG,
    NOTE_TAG,
    PARAM_PREFIX,
    PARENT_TAG,
    PREDICTIONS,
    REPEAT_TAG,
    REPORT_DIR,
    RUN_FILE,
    SCORED_SPLIT,
    SEED_TAG,
    STEP_METRIC,
    STOP_TAG,
    TRIAL_CONFIG,
    TRIAL_TAG,
    TRIALS_COMPLETED,
    TRIALS_DUPLICATE,
    TRIALS_FAILED,
    TRIALS_PRUNED,
    TRIALS_REPEATED,
    VERSION_TAG,
    WEIGHT_PREFIX,
    TrackingError,
    error_reason,
    numeric_metrics,
    stop_reason,
    trial_params,
    trial_run_name,
)
from tune_losses.tracking.provenance import VERSIONED_PACKAGES, git_tags, package_versions
from tune_losses.tracking.readers import (
    TrialRecord,
    failure_reasons,
    find_parent,
    find_trial_run,
    load_trials,
    metric_history,
    open_client,
    search_all,
    weight_histories,
)
from tune_losses.tracking.search_tracker import SearchTracker
from tune_losses.tracking.story import STORY_TOP, run_link, search_story, trial_counts
from tune_losses.tracking.writers import RunLogger, log_scores

__all__ = [
    "GAIN",
    "GAIN_HIGH",
    "GAIN_LOW",
    "WINNER_TAG",
    "ConfirmArm",
    "ConfirmOutcome",
    "confirm_outcome",
    "confirm_rows",
    "confirm_story",
    "confirm_verdict",
    "load_confirm",
    "paired_interval",
    "search_confirm",
    "BASELINE_TAG",
    "CONFIRM_FILE",
    "CONFIRM_TAG",
    "SEED_TAG",
    "BEST_CONFIG",
    "BEST_METRIC",
    "CHOICE_SUFFIXES",
    "CLONED_TAG",
    "CURVE_METRIC",
    "DEVICE_TAG",
    "EPOCHS_REPEATED",
    "EPOCHS_SPENT",
    "EPOCHS_TAG",
    "ERROR_REASON_TAG",
    "ERROR_TAG",
    "GIT_COMMIT_TAG",
    "GIT_DIRTY_TAG",
    "HOSTNAME_TAG",
    "KIND_TAG",
    "LEADERBOARD",
    "LEADERBOARD_COLUMNS",
    "LINEAGE_FILE",
    "LINEAGE_TAG",
    "REPEAT_TAG",
    "NODE_IP_TAG",
    "NOTE_TAG",
    "PARAM_PREFIX",
    "PARENT_TAG",
    "PREDICTIONS",
    "REPORT_DIR",
    "RUN_FILE",
    "STEP_METRIC",
    "STOP_TAG",
    "STORY_TOP",
    "TRIALS_COMPLETED",
    "TRIALS_FAILED",
    "TRIALS_DUPLICATE",
    "TRIALS_PRUNED",
    "TRIALS_REPEATED",
    "TRIAL_CONFIG",
    "TRIAL_TAG",
    "VERSIONED_PACKAGES",
    "VERSION_TAG",
    "WEIGHT_PREFIX",
    "RunLogger",
    "SearchTracker",
    "TrackingError",
    "TrialRecord",
    "best_label",
    "best_metric_name",
    "error_reason",
    "failure_reasons",
    "find_parent",
    "find_trial_run",
    "format_best",
    "git_tags",
    "leaderboard_csv",
    "leaderboard_rows",
    "load_trials",
    "log_scores",
    "metric_history",
    "SCORED_SPLIT",
    "numeric_metrics",
    "open_client",
    "package_versions",
    "pareto_front",
    "ranking",
    "run_link",
    "search_all",
    "search_story",
    "searched_params",
    "short_names",
    "short_value",
    "stop_reason",
    "trial_counts",
    "trial_params",
    "trial_run_name",
    "varying_params",
    "weight_histories",
]
