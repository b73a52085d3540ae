"""Shared fixtures: a tiny experiment that trains in seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_experiment(**sections: Any) -> dict[str, Any]:
    """A raw experiment (synthetic data, ~0.2 M-parameter model) that trains in seconds."""
    raw: dict[str, Any] = {
        "data": {
            "format": "synthetic",
            "synthetic": {"num_train": 16, "num_val": 8, "size": 32, "num_classes": 4},
            "batch_size": 8,
        },
        "model": {
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_050",
            "kwargs": {"decoder_channels": [16, 16, 8, 8, 8]},
            "aux_channels": 8,
        },
        "train": {"epochs": 2, "lr": 0.005, "threads": 1},
        "loss": {"decode": {"ce": {"weight": 1.0}}, "aux": {"ce": {"weight": 0.4}}},
    }
    for key, value in sections.items():
        raw[key] = value
    return raw


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_experiment()


# The aux-head CE weight of aux_weight.yaml: a constant or a decaying schedule.
AUX_CE_WEIGHT: dict[str, Any] = {
    "choice": {
        "constant": {"uniform": [0.05, 1.0]},
        "decay": {
            "schedule": "linear",
            "start": {"uniform": [0.3, 1.0]},
            "end": {"uniform": [0.05, 0.3]},
        },
    }
}


def run_cli(cwd: Path, *args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m tune_losses.search ARGS`` in ``cwd`` (``path`` extends PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), path) if p)}
    return subprocess.run(
        [sys.executable, "-m", "tune_losses.search", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_space(path: Path, **sections: object) -> Path:
    raw = tiny_experiment()
    raw["train"] = {"epochs": 4, "lr": 0.005}
    raw["search"] = {
        "num_samples": 6,
        "max_concurrent": 2,
        "grace_period": 1,
        "reduction_factor": 2,
        "n_startup_trials": 6,
    }
    raw["loss"] = {
        "decode": {"ce": {"weight": 1.0}, "dice": {"weight": {"uniform": [0.0, 1.0]}}},
        "aux": {"ce": {"weight": AUX_CE_WEIGHT}},
    }
    raw.update(sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class TinySearch:
    """A finished tiny search (6 trials, 4 epochs, ASHA) and where it wrote."""

    root: Path
    uri: str
    experiment: str
    storage: Path
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory) -> TinySearch:
    """One real search through the CLI for the session (about a minute on 2 cores): the
    end-to-end test, the report and the notebook all read its MLflow store."""
    root = tmp_path_factory.mktemp("tiny_search")
    loss = {
        "decode": {
            "ce": {"weight": 1.0},
            "dice": {"weight": {"uniform": [0.0, 1.0]}},
            "extra": EXTRA_CHOICE,
        },
        "aux": {"ce": {"weight": AUX_CE_WEIGHT}},
    }
    space = write_space(root / "space.yaml", loss=loss)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    storage = root / "ray"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(root, *args, "--storage", str(storage), "--seed", "3")
    return TinySearch(root, uri, "e2e", storage, proc)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; raises ValueError when ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# Two options of one choice holding the same sub-path with different marker kinds.
EXTRA_CHOICE: dict[str, Any] = {
    "choice": {
        "focal": {"term": "focal", "weight": {"uniform": [0.1, 1.0]}},
        "dice": {"term": "dice", "weight": {"loguniform": [0.01, 1.0]}},
    }
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``mlflow server`` on 127.0.0.1 for the session (it takes ~10 s to answer)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'store.db'}", "--workers", "1"]
    cmd += ["--artifacts-destination", str(root / "artifacts")]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A two-node Ray cluster on 127.0.0.1 (a head and a second node, one CPU each).

    Both run ``ray start --block`` under this fixture, so stopping them stops only what
    the fixture started (``ray stop`` would stop every Ray process of the machine)."""
    root = tmp_path_factory.mktemp("ray_cluster")
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--block"]
    head_cmd = [ray, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
    head = subprocess.Popen(
        head_cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    procs = [head]
    try:
        status = [ray, "status", f"--address={address}"]
        deadline = time.monotonic() + 180
        while subprocess.run(status, env=env, capture_output=True).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray head node did not start")
            time.sleep(2)
        node = [ray, "start", f"--address={address}", *common]
        procs.append(
            subprocess.Popen(
                node, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        )
        while (
            "2.0 CPU" not in subprocess.run(status, env=env, capture_output=True, text=True).stdout
        ):
            if time.monotonic() > deadline:
                pytest.fail("second ray node did not join")
            time.sleep(2)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        # `ray start` records the cluster for later ray.init() calls; a killed --block run
        # leaves that record behind, pointing at a cluster that no longer exists
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if record.is_file() and record.read_text().strip().endswith(f":{port}"):
            record.unlink()


NOTEBOOK = ROOT / "notebooks" / "review_search.ipynb"


def run_notebook(uri: str, experiment: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute the review notebook on the latest search of ``experiment`` in ``uri`` (nbclient);
    returns the executed notebook. A failing cell raises with its traceback."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TUNE_LOSSES_TRACKING_URI", uri)
    monkeypatch.setenv("TUNE_LOSSES_EXPERIMENT", experiment)
    monkeypatch.delenv("TUNE_LOSSES_SEARCH", raising=False)  # the latest search
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb
