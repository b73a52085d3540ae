"""A search whose ``--storage`` is an object store (``s3://`` on a moto server on 127.0.0.1):
checkpoints, Ray's state and the best-epoch files all go through pyarrow's S3 filesystem."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyarrow import fs

from conftest import (
    S3Server,
    assert_one_value_per_step,
    png_size,
    runs_of,
    sqlite_store,
    stop_tree,
    write_space,
)
from tune_losses.engine import PREDICTIONS_FILE, PREVIEW_IMAGES, SUMMARY_FILE
from tune_losses.plots import predictions_png_size
from tune_losses.tune.callback import fetch_best_epoch

ROOT = Path(__file__).resolve().parents[1]


def s3_filesystem(server: S3Server) -> fs.S3FileSystem:
    """pyarrow's S3 filesystem on the test server, configured without the environment."""
    return fs.S3FileSystem(
        access_key="test",
        secret_key="test",
        region="us-east-1",
        scheme="http",
        endpoint_override=server.endpoint.removeprefix("http://"),
    )


def test_best_epoch_files_are_read_from_an_s3_checkpoint(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The driver copies best.json and predictions.png out of a checkpoint that lives in
    the bucket (not a local folder), and leaves the model state where it is."""
    from ray import tune

    s3 = s3_filesystem(s3_server)
    folder = f"{s3_server.bucket}/unit/checkpoint_000002"
    files = {SUMMARY_FILE: b'{"best_epoch": 2}', PREDICTIONS_FILE: b"png", "state.pt": b"big"}
    for name, data in files.items():
        with s3.open_output_stream(f"{folder}/{name}") as stream:
            stream.write(data)
    found = fetch_best_epoch(tune.Checkpoint(folder, filesystem=s3), tmp_path)
    assert sorted(found) == sorted([SUMMARY_FILE, PREDICTIONS_FILE])
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == {"best_epoch": 2}
    assert (tmp_path / PREDICTIONS_FILE).read_bytes() == b"png"
    assert not (tmp_path / "state.pt").exists()
    # a checkpoint written before its first best epoch holds neither file
    (tmp_path / "empty").mkdir()
    with s3.open_output_stream(f"{s3_server.bucket}/unit/checkpoint_000000/state.pt") as stream:
        stream.write(b"big")
    empty = tune.Checkpoint(f"{s3_server.bucket}/unit/checkpoint_000000", filesystem=s3)
    assert fetch_best_epoch(empty, tmp_path / "empty") == []


@dataclass
class Stopped:
    """A search on ``--storage s3://...`` stopped with Ctrl-C, and what it left behind."""

    cmd: list[str]
    env: dict[str, str]
    uri: str
    s3: fs.S3FileSystem
    run_dir: str  # the search's folder in the bucket
    stopped: subprocess.CompletedProcess[str]  # the Ctrl-C'd search
    parent_status: str  # after Ctrl-C, before --resume
    child_statuses: list[str]
    local: Path  # the working folder


@dataclass
class Interrupted:
    """The stopped search, then resumed to its end."""

    stop: Stopped
    resumed: subprocess.CompletedProcess[str]


EPOCHS = 4


@pytest.fixture(scope="module")
def stopped(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """One FIFO search (3 trials, 4 epochs) on ``--storage s3://tune-losses/searches`` (state,
    checkpoints and best_config.yaml through pyarrow's S3 filesystem), Ctrl-C'd once a trial
    reported epoch 2."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": EPOCHS, "lr": 0.005},
        search={"num_samples": 3, "max_concurrent": 2, "scheduler": "fifo"},
    )
    uri = sqlite_store(tmp_path / "mlruns.db")
    cmd = [sys.executable, "-m", "tune_losses.search", "--space", str(space)]
    cmd += ["--tracking-uri", uri, "--experiment", "e2e"]
    cmd += ["--storage", f"s3://{s3_server.bucket}/searches"]
    env = {**s3_server.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = []
        for line in proc.stdout or []:
            seen.append(line)
            if f"epoch 2/{EPOCHS}" in line:
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(seen) + proc.communicate(timeout=300)[0]
    finally:
        stop_tree(proc, timeout=30)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    _, parents, children = runs_of(uri)
    s3 = s3_filesystem(s3_server)
    (run_dir,) = s3.get_file_info(fs.FileSelector(f"{s3_server.bucket}/searches"))
    return Stopped(
        cmd,
        env,
        uri,
        s3,
        run_dir.path,
        done,
        parents[0].info.status,
        [c.info.status for c in children],
        tmp_path,
    )


@pytest.fixture(scope="module")
def interrupted(stopped: Stopped) -> Interrupted:
    """The stopped search ``--resume``-d from the latest search found by listing the
    bucket."""
    resumed = subprocess.run(
        [*stopped.cmd, "--resume"],
        cwd=stopped.local,
        env=stopped.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Interrupted(stopped, resumed)


@pytest.mark.slow
def test_ctrl_c_leaves_a_killed_parent_and_no_running_child(stopped: Stopped) -> None:
    assert stopped.stopped.returncode == 130, stopped.stopped.stdout[-3000:]
    assert "--resume" in stopped.stopped.stdout
    assert stopped.parent_status == "KILLED"
    assert "RUNNING" not in stopped.child_statuses


@pytest.mark.slow
def test_a_uri_storage_holds_the_state_and_no_study_file(stopped: Stopped) -> None:
    """--storage <URI>: the search's state goes through pyarrow.fs, nothing under the
    working folder; the Optuna study is in memory (say so)."""
    out = stopped.stopped.stdout
    assert stopped.stopped.returncode == 130, out[-3000:]
    assert "Optuna study is kept in memory" in out
    s3, run_dir = stopped.s3, stopped.run_dir
    assert s3.get_file_info(f"{run_dir}/tune_losses.json").type == fs.FileType.File
    assert s3.get_file_info(f"{run_dir}/optuna.db").type == fs.FileType.NotFound


@pytest.mark.slow
def test_interrupted_search_resumes_into_the_same_runs(interrupted: Interrupted) -> None:
    done = interrupted.resumed
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, parents, children = runs_of(interrupted.stop.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        assert_one_value_per_step(client, child)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/mIoU")]
        assert steps == list(range(1, EPOCHS + 1)), steps


@pytest.mark.slow
def test_search_on_a_uri_storage_resumes(interrupted: Interrupted) -> None:
    """Resumed from the latest search found by listing the URI: best_config.yaml is written
    there, nothing under the working folder."""
    done = interrupted.resumed
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s3, run_dir = interrupted.stop.s3, interrupted.stop.run_dir
    assert s3.get_file_info(f"{run_dir}/best_config.yaml").type == fs.FileType.File
    assert not (interrupted.stop.local / "ray_results").exists()
    client, parents, children = runs_of(interrupted.stop.uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    for child in children:
        assert_one_value_per_step(client, child)


@pytest.mark.slow
def test_search_on_s3_storage_logs_every_best_epoch(interrupted: Interrupted) -> None:
    """After Ctrl-C and --resume, every child has its best-epoch files, read from the
    checkpoints in the bucket."""
    done = interrupted.resumed
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, _, children = runs_of(interrupted.stop.uri)
    for child in children:
        run_id = child.info.run_id
        arts = {a.path for a in client.list_artifacts(run_id)}
        assert {"best_epoch.json", "best_epoch", PREDICTIONS_FILE} <= arts, arts
        local = interrupted.stop.local / "download" / run_id
        local.mkdir(parents=True)
        best = json.loads(
            Path(client.download_artifacts(run_id, "best_epoch.json", str(local))).read_text()
        )
        assert best["epochs_run"] == EPOCHS
        assert best["best_val_mIoU"] == pytest.approx(child.data.metrics["best_val_mIoU"])
        assert len(best["iou_per_class"]) == len(best["confmat"]) == 4
        png = Path(client.download_artifacts(run_id, PREDICTIONS_FILE, str(local)))
        assert png_size(png.read_bytes()) == predictions_png_size(PREVIEW_IMAGES)
