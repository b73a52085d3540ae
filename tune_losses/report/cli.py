"""``python -m tune_losses.report``: the flags, the printed report, the exit codes."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune_losses.report.files import log_report, search_trust, write_report
from tune_losses.report.importances import Importances, param_importances
from tune_losses.report.tables import (
    TERMINAL_WIDTH,
    print_importances,
    print_leaderboard,
    status_summary,
)
from tune_losses.tracking import (
    LEADERBOARD,
    TrackingError,
    TrialRecord,
    confirm_story,
    find_parent,
    load_trials,
    open_client,
    ranking,
    search_confirm,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m tune_losses.report``."""
    p = argparse.ArgumentParser(
        prog="python -m tune_losses.report",
        description="Leaderboard, parameter importances and curves of a search, from MLflow.",
    )
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow tracking URI")
    p.add_argument("--experiment", default="tune_losses", help="MLflow experiment name")
    p.add_argument(
        "--run", help="parent run id or run name of the search (default: the latest search)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: report/<parent run name>)")
    p.add_argument(
        "--top", type=_positive_int, metavar="N", help="show and plot only the N best trials"
    )
    p.add_argument("--no-log", action="store_true", help="do not log the files on the parent run")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def default_out(parent: Run) -> Path:
    """``report/<parent run name>``, the name made safe for a path."""
    name = parent.info.run_name or parent.info.run_id
    return Path("report") / (re.sub(r"[^\w.-]+", "_", name).strip("._") or parent.info.run_id)


def report(
    client: MlflowClient,
    parent: Run,
    out: Path,
    *,
    top: int | None = None,
) -> tuple[list[TrialRecord], Importances, list[Path]]:
    """Print the leaderboard and importances of ``parent``'s search and write the files.

    Returns the trials (best first), the importances and the files written into ``out``.
    """
    trials = load_trials(client, parent)
    name = parent.info.run_name or parent.info.run_id
    print(
        f"search {name} ({parent.info.run_id}, {parent.info.status.lower()}): "
        f"{status_summary(trials)}"
    )
    shown = ", ".join(f"{metric} {mode}" for metric, mode in ranking(parent))
    print_leaderboard(trials, f"Leaderboard of {name} (best {shown})", top, csv=out / LEADERBOARD)
    trust = search_trust(parent, trials)
    print(textwrap.fill(f"what the search can trust: {trust.sentence()}", TERMINAL_WIDTH))
    searched = [t for t in trials if not t.baseline]  # baselines: in the leaderboard only
    importances = param_importances(searched, budget=trust.trusted)
    print_importances(importances)
    confirm = search_confirm(client, parent)
    if confirm is not None:
        print("\n".join(confirm_story(confirm, confirm.metric.split("/")[0])).strip())
    written = write_report(
        client,
        parent,
        trials,
        out,
        top=top,
        importances=importances,
        trust=trust,
        confirm=confirm,
    )
    print(f"wrote to {out}:")
    names = ", ".join(p.name for p in written)
    print(textwrap.fill(names, TERMINAL_WIDTH, initial_indent="  ", subsequent_indent="  "))
    return trials, importances, written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on a user error, 1 when logging the files fails."""
    args = build_parser().parse_args(argv)
    try:
        client = open_client(args.tracking_uri)
        parent = find_parent(client, args.experiment, args.run)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: {args.tracking_uri}: {exc.message.splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out(parent)
    _, _, files = report(client, parent, out, top=args.top)
    if args.no_log:
        return 0
    try:
        log_report(client, parent, files)
    except (MlflowException, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(
            f"error: logging the report on run {parent.info.run_id} failed ({first}); "
            f"the files are in {out}, --no-log skips logging",
            file=sys.stderr,
        )
        return 1
    print(f"logged them on run {parent.info.run_id} under report/")
    return 0
