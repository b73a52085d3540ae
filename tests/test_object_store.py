"""A search whose ``--storage`` is an object store (``s3://`` on a moto server on 127.0.0.1):
checkpoints, Ray's state and the best-epoch files all go through pyarrow's S3 filesystem."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyarrow import fs

from conftest import S3Server, png_size, stop_tree, write_space
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


@pytest.mark.slow
def test_search_on_s3_storage_resumes_and_logs_best_epochs(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """``--storage s3://...``: Ctrl-C once an epoch is reported, ``--resume`` (found by
    listing the bucket), then every child has its best-epoch files and the parent ends."""
    epochs = 3
    space = write_space(
        tmp_path / "space.yaml",
        train={"epochs": epochs, "lr": 0.005},
        search={"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo"},
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    storage = f"s3://{s3_server.bucket}/searches"
    cmd = [sys.executable, "-m", "tune_losses.search", "--space", str(space)]
    cmd += ["--tracking-uri", uri, "--experiment", "e2e", "--storage", storage]
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
            if f"epoch 1/{epochs}" in line:
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(seen) + proc.communicate(timeout=120)[0]
    finally:
        stop_tree(proc, timeout=30)
    assert proc.returncode == 130, out[-3000:]
    assert "--resume" in out

    done = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert [c.info.status for c in children] == ["FINISHED"] * 2
    for child in children:
        run_id = child.info.run_id
        arts = {a.path for a in client.list_artifacts(run_id)}
        assert {"best_epoch.json", "best_epoch", PREDICTIONS_FILE} <= arts, arts
        local = tmp_path / "download" / run_id
        local.mkdir(parents=True)
        best = json.loads(
            Path(client.download_artifacts(run_id, "best_epoch.json", str(local))).read_text()
        )
        assert best["epochs_run"] == epochs
        assert best["best_val_mIoU"] == pytest.approx(child.data.metrics["best_val_mIoU"])
        assert len(best["iou_per_class"]) == len(best["confmat"]) == 4
        png = Path(client.download_artifacts(run_id, PREDICTIONS_FILE, str(local)))
        assert png_size(png.read_bytes()) == predictions_png_size(PREVIEW_IMAGES)
    # Ray's state and the best config are in the bucket, nothing under the working folder
    s3 = s3_filesystem(s3_server)
    (run_dir,) = s3.get_file_info(fs.FileSelector(f"{s3_server.bucket}/searches"))
    assert s3.get_file_info(f"{run_dir.path}/best_config.yaml").type == fs.FileType.File
    assert not (tmp_path / "ray_results").exists()
