"""``python -m tune_losses.search``: Ray Tune + Optuna (TPE) + ASHA over a loss search space.

The entry point stays here; the work is in :mod:`tune_losses.tune.cli`.

Example:
    python -m tune_losses.search --space search_spaces/quickstart.yaml
    python -m tune_losses.search --space search_spaces/aux_weight.yaml --dry-run
    python -m tune_losses.search --space ... --address auto --storage /nfs/ray_results
"""

from __future__ import annotations

from tune_losses.tune.cli import exit_now, main

__all__ = ["main"]

if __name__ == "__main__":
    exit_now(main())
