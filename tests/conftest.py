"""Shared fixtures: a tiny experiment that trains in seconds."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tune_losses.engine import PREVIEW_IMAGES
from tune_losses.plots import predictions_png_size
from tune_losses.tiny import AUX_CE_WEIGHT, tiny_experiment, tiny_space

ROOT = Path(__file__).resolve().parents[1]
_STORE_TEMPLATE: list[Path] = []  # an empty MLflow sqlite store, made once per test process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order ``make test``'s workers take the files in (``--dist loadfile
    --no-loadscope-reorder``): the end-to-end files (those holding a ``slow`` test) first,
    the unit tests after, so the long searches start early and the short files fill the
    end, where a worker would otherwise wait idle on the other's last search. Of the files
    that read the session's ``tiny_search``, the largest goes early (it runs the search)
    and the rest last, when the search is on disk for every worker to read."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    counts: dict[Path, int] = {}
    for item in items:
        if "tiny_search" in getattr(item, "fixturenames", ()):
            counts[item.path] = counts.get(item.path, 0) + 1
    first = max(counts, key=lambda path: (counts[path], str(path)), default=None)

    def rank(item: pytest.Item) -> int:
        if item.path in counts and item.path != first:
            return 2
        return 0 if item.path in slow else 1

    items.sort(key=rank)


def sqlite_store(path: Path) -> str:
    """The URI of a new, empty MLflow sqlite store at ``path``: a copy of one made once per
    test process (an empty store's schema migrations take seconds, a copy milliseconds)."""
    if not _STORE_TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="mlflow_store_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(f"sqlite:///{folder / 'empty.db'}").search_experiments()
        _STORE_TEMPLATE.append(folder / "empty.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE[0], path)
    return f"sqlite:///{path}"


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_experiment()


def run_benchmark(script: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script> --quick --out <out> ARGS`` in ``out``, this checkout imported."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *args],
        cwd=out,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )


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


@dataclass
class Searched:
    """A finished search through the CLI: its store, its run folder and what it printed."""

    uri: str
    run_dir: Path
    out: str

    def study(self) -> Any:
        """The search's stored Optuna study (``<run dir>/optuna.db``)."""
        import optuna

        storage = optuna.storages.RDBStorage(f"sqlite:///{self.run_dir / 'optuna.db'}")
        return optuna.load_study(study_name=self.run_dir.name, storage=storage)


def search_in(root: Path, space: Path, path: str = "") -> Searched:
    """``python -m tune_losses.search`` on ``space`` in ``root`` (experiment ``e2e``, a
    sqlite store and ``--storage root/ray``, ``path`` extending PYTHONPATH), which must
    exit 0."""
    uri = sqlite_store(root / "mlruns.db")
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(root, *args, "--storage", str(root / "ray"), path=path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (root / "ray").iterdir()
    return Searched(uri, run_dir, proc.stdout)


def runs_of(uri: str) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def assert_one_value_per_step(client: MlflowClient, child: Any) -> None:
    """Every metric of a child: steps strictly increasing (no step logged twice), and
    ``best_val_mIoU`` the max of the logged ``val/mIoU`` history."""
    for key in child.data.metrics:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), (key, steps)
    curve = [m.value for m in client.get_metric_history(child.info.run_id, "val/mIoU")]
    assert child.data.metrics["best_val_mIoU"] == max(curve)


def start_search(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """The search CLI in its own session (so what it leaves behind can be stopped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tune_losses.search", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def sigkill_after(proc: subprocess.Popen[str], marker: str) -> str:
    """``kill -9`` the driver once ``marker`` is printed, then whatever it started
    (its session: local Ray); returns what it printed."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return "".join(seen)


def write_space(path: Path, **sections: object) -> Path:
    """The tiny search space (:func:`tune_losses.tiny.tiny_space`) written to ``path``."""
    path.write_text(yaml.safe_dump(tiny_space(**sections), sort_keys=False))
    return path


@dataclass
class TinySearch:
    """A finished tiny search (6 trials, 4 epochs, ASHA) and where it wrote."""

    root: Path
    uri: str
    experiment: str
    storage: Path
    proc: subprocess.CompletedProcess[str]


def _run_tiny_search(root: Path) -> TinySearch:
    loss = {
        "decode": {
            "ce": {"weight": 1.0},
            "dice": {"weight": {"uniform": [0.0, 1.0]}},
            "extra": EXTRA_CHOICE,
        },
        "aux": {"ce": {"weight": AUX_CE_WEIGHT}},
    }
    space = write_space(root / "space.yaml", loss=loss)
    uri = sqlite_store(root / "mlruns.db")
    storage = root / "ray"
    args = ["--space", str(space), "--tracking-uri", uri, "--experiment", "e2e"]
    proc = run_cli(root, *args, "--storage", str(storage), "--seed", "3")
    return TinySearch(root, uri, "e2e", storage, proc)


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> TinySearch:
    """One real search through the CLI for the whole run (about a minute on 2 cores): the
    end-to-end test, the report and the notebook all read its MLflow store and files, and
    none writes to them. Under pytest-xdist the first worker to ask runs it in the folder
    every worker shares, the others wait on a lock and read what it printed from disk."""
    if worker_id == "master":
        return _run_tiny_search(tmp_path_factory.mktemp("tiny_search"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, above each worker's
    root, printed = shared / "tiny_search", shared / "tiny_search.json"
    with FileLock(str(shared / "tiny_search.lock")):
        if not printed.is_file():
            root.mkdir()
            searched = _run_tiny_search(root)
            proc = searched.proc
            fields = {"args": proc.args, "returncode": proc.returncode}
            fields.update(stdout=proc.stdout, stderr=proc.stderr)
            printed.write_text(json.dumps({"uri": searched.uri, "proc": fields}))
    saved = json.loads(printed.read_text())
    proc = subprocess.CompletedProcess(**saved["proc"])
    return TinySearch(root, saved["uri"], "e2e", root / "ray", proc)


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


# ------------------------------------------------------------------ processes we started
# Servers are stopped by PID, with every process they spawned (Ray's raylet and workers,
# gunicorn's workers), never by name: other people's servers run on the same machine.


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a live process, from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie: dead, only waiting for its parent
        return None
    return int(fields[1]), int(fields[19])


def process_tree(pid: int) -> list[tuple[int, int]]:
    """``pid`` and all its live descendants, as ``(pid, start time)`` pairs (the start
    time tells a process from a later one that got the same PID)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    root = _proc_stat(pid)
    tree = [(pid, root[1])] if root else []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            tree.append(child)
            todo.append(child[0])
    return tree


def kill_processes(procs: list[tuple[int, int]]) -> None:
    """SIGKILL each ``(pid, start time)`` still alive as that same process."""
    for pid, started in procs:
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop_tree(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL) and then whatever it had spawned that is
    still alive. Safe on a process that is already dead."""
    tree = process_tree(proc.pid) if proc.poll() is None else []
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    kill_processes(tree)


# ------------------------------------------------------------------ MLflow servers


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_mlflow_server(root: Path, backend: str, *options: str) -> Iterator[str]:
    """An ``mlflow server`` on 127.0.0.1 over ``backend`` (its log: ``root/server.log``),
    stopped with its workers on exit, whatever happened."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend, "--workers", "1", *options]
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, log_path)
            yield url
        finally:
            stop_tree(proc, timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``mlflow server`` on sqlite, 127.0.0.1, for the session (~10 s to answer)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    backend = f"sqlite:///{root / 'store.db'}"
    artifacts = ("--artifacts-destination", str(root / "artifacts"))
    with running_mlflow_server(root, backend, *artifacts) as url:
        yield url


# ------------------------------------------------------------------ an S3 object store


@dataclass
class S3Server:
    """A moto S3 server on 127.0.0.1 with one bucket, and the environment that points the
    AWS clients of a process (pyarrow's S3FileSystem in the driver and the Ray workers)
    at it and nowhere else: fixed test credentials, no profile, no instance metadata."""

    endpoint: str
    bucket: str
    home: Path  # holds the (absent) AWS config files the clients are pointed at

    def env(self) -> dict[str, str]:
        """``os.environ`` without the caller's AWS settings, plus this server's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.home / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.home / "credentials"),
        )
        return env


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``python -m moto.server`` on 127.0.0.1 (a free port) for the session, with bucket
    ``tune-losses``; stopped by PID at the end."""
    root = tmp_path_factory.mktemp("s3_server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        server = S3Server(endpoint, "tune-losses", root)
        deadline = time.monotonic() + 60
        while True:  # creating the bucket is the health check
            request = urllib.request.Request(f"{endpoint}/{server.bucket}", method="PUT")
            try:
                with urllib.request.urlopen(request, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.3)
        yield server
    finally:
        stop_tree(proc, timeout=10)


# ------------------------------------------------------------------ a team's MLflow


class PostgreSQL:
    """PostgreSQL (``initdb``/``pg_ctl`` from PATH) on 127.0.0.1 in a folder of its own,
    with a password-protected user and one database; as root, it runs as ``postgres``
    (PostgreSQL refuses to run as root)."""

    user, password, database = "tune", "tune-secret", "mlflow"

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL's initdb/pg_ctl are not on PATH")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # not under pytest's tmp folder: that one is private to us, and the server is not us
        self.root = Path(tempfile.mkdtemp(prefix="tune_losses_pg_"))
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.started = False

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.is_file() else ""
            pytest.fail(f"{' '.join(cmd[:2])} failed: {proc.stdout}{proc.stderr}{tail}")

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password)
        if self.as_user:
            shutil.chown(pwfile, "postgres")
        self._run(
            self.initdb, "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"  # -w: the default
        self.started = True
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "start")
        import psycopg  # the driver the mlflow server uses, a dev dependency

        with psycopg.connect(self.uri.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")

    def stop(self) -> None:
        """``pg_ctl stop``; the postmaster and its children killed by PID if that fails;
        the folder removed."""
        try:
            if self.started:
                pidfile = self.data / "postmaster.pid"
                pid = int(pidfile.read_text().split()[0]) if pidfile.is_file() else None
                tree = process_tree(pid) if pid else []
                stop = [*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w"]
                try:
                    subprocess.run([*stop, "stop"], capture_output=True, timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                kill_processes(tree)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    """PostgreSQL on 127.0.0.1 for the session, in a temporary folder; stopped at the end."""
    server = PostgreSQL()
    try:
        server.start()
        yield server
    finally:
        server.stop()


class MlflowServer(NamedTuple):
    url: str
    log: Path  # the server's stdout and stderr
    artifacts: Path  # --artifacts-destination
    backend: str  # --backend-store-uri


@pytest.fixture(scope="session")
def mlflow_postgres_server(
    tmp_path_factory: pytest.TempPathFactory, postgresql: PostgreSQL
) -> Iterator[MlflowServer]:
    """A team's MLflow: ``mlflow server`` on PostgreSQL, serving the artifacts itself
    (clients upload and download them through it), on 127.0.0.1, for the session."""
    root = tmp_path_factory.mktemp("mlflow_postgres")
    artifacts = root / "artifacts"
    options = ("--serve-artifacts", "--artifacts-destination", str(artifacts))
    with running_mlflow_server(root, postgresql.uri, *options) as url:
        yield MlflowServer(url, root / "server.log", artifacts, postgresql.uri)


# ------------------------------------------------------------------ a two-node Ray cluster

_RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class RayCluster:
    """A Ray cluster on 127.0.0.1: a head and a worker node, one CPU each.

    Each node is a ``ray start --block`` in a session of its own, so stopping it stops
    only what it started (``ray stop`` would stop every Ray process of the machine).
    Token auth is set up as between machines: ``ray get-auth-token --generate`` writes
    the token to the head's own home folder (``<home>/.ray/auth_token``), and the worker
    node and the drivers, each with a home folder of its own, are handed that file with
    ``RAY_AUTH_TOKEN_PATH``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token_path = self._home("head") / ".ray" / "auth_token"
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self._nodes: list[subprocess.Popen] = []

    def _home(self, who: str) -> Path:
        home = self.root / f"home_{who}"
        home.mkdir(exist_ok=True)
        return home

    def _env(self, who: str, token: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _RAY_AUTH}
        env["HOME"] = str(self._home(who))
        env["RAY_AUTH_MODE"] = "token"
        if token:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        return env

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver joining the cluster (the token by its path)."""
        return {**self._env("driver"), **extra}

    def _start_node(self, who: str, *args: str) -> subprocess.Popen:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        with (self.root / f"{who}.log").open("a") as log:
            proc = subprocess.Popen(
                [self.ray, "start", *args, *common, "--block"],
                cwd=self.root,
                env=self._env(who, token=who != "head"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._nodes.append(proc)
        return proc

    def cpus(self) -> float:
        """The CPUs of the cluster's live nodes as ``ray status`` counts them (0: no answer)."""
        status = subprocess.run(
            [self.ray, "status", f"--address={self.address}"],
            env=self._env("driver"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"/(\d+(?:\.\d+)?) CPU", status.stdout)
        return float(found.group(1)) if status.returncode == 0 and found else 0.0

    def _wait_cpus(self, cpus: float, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.cpus() != cpus:
            if (self.head is not None and self.head.poll() is not None) or (
                time.monotonic() > deadline
            ):
                logs = "".join(p.read_text()[-1500:] for p in sorted(self.root.glob("*.log")))
                pytest.fail(f"{what}: {logs}")
            time.sleep(1)

    def start(self) -> None:
        generate = [self.ray, "get-auth-token", "--generate"]
        env = {k: v for k, v in self._env("head", token=False).items() if k != "RAY_AUTH_MODE"}
        subprocess.run(generate, env=env, capture_output=True, check=True, timeout=120)
        assert self.token_path.is_file(), f"no token at {self.token_path}"
        self.head = self._start_node(
            "head", "--head", f"--port={self.port}", "--include-dashboard=false"
        )
        self._wait_cpus(1.0, "ray head node did not start")
        self.start_worker()

    def start_worker(self) -> None:
        self.worker = self._start_node("worker", f"--address={self.address}")
        self._wait_cpus(2.0, "the worker node did not join")

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def kill_worker(self) -> list[int]:
        """SIGKILL every process of the worker node at once (its raylet, agents, and the
        trial workers the raylet started, which run in sessions of their own), as when
        the machine dies; returns their PIDs."""
        assert self.worker is not None
        tree = process_tree(self.worker.pid)
        kill_processes(tree)
        self.worker.wait(timeout=30)
        return [pid for pid, _ in tree]

    def ensure_worker(self) -> None:
        """Start a new worker node if a test killed the last one."""
        if not self.worker_alive():
            self._wait_cpus(1.0, "the killed worker node is still counted")
            self.start_worker()

    def stop(self) -> None:
        """Stop what is left of the nodes (a killed one is skipped), the newest first."""
        for proc in reversed(self._nodes):
            stop_tree(proc)
        # `ray start` records the cluster for later ray.init() calls; a killed --block run
        # leaves that record behind, pointing at a cluster that no longer exists
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if record.is_file() and record.read_text().strip().endswith(f":{self.port}"):
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


@pytest.fixture(scope="session")
def _ray_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    cluster = RayCluster(tmp_path_factory.mktemp("ray_cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_cluster(_ray_cluster_session: RayCluster) -> RayCluster:
    """The session's two-node Ray cluster on 127.0.0.1, with both nodes up (a worker
    node that an earlier test killed is replaced)."""
    _ray_cluster_session.ensure_worker()
    return _ray_cluster_session


def assert_the_story(client: MlflowClient, parent: Run, children: list[Run], tmp: Path) -> None:
    """What issue 11 asks a parent and its children to tell, read back from the store."""
    trials = sorted(children, key=lambda c: -c.data.metrics.get("best_val_mIoU", -1.0))
    best = trials[0]
    note = parent.data.tags["mlflow.note.content"]
    link = f"#/experiments/{parent.info.experiment_id}/runs/{best.info.run_id}"
    assert f"**Best trial: [{best.info.run_name}]({link})**" in note
    assert "python -m tune_losses.search --space" in note and "python -m tune_losses.train" in note
    reasons = [c.data.tags["stop_reason"] for c in children]
    metrics = parent.data.metrics
    assert metrics["trials_pruned"] == reasons.count("asha")
    assert metrics["trials_failed"] == reasons.count("error") == 0
    assert metrics["trials_completed"] + metrics["trials_pruned"] == len(children)
    assert metrics["epochs_spent"] == sum(int(c.data.tags["epochs_run"]) for c in children)
    tags = parent.data.tags
    assert tags["version.torch"] and tags["version.ray"] and tags["version.mlflow"]
    assert "version.segmentation_models_pytorch" in tags and "version.optuna" in tags
    names = sorted(c.info.run_name for c in children)
    assert [n.split()[0] for n in names] == [f"t{i:02d}" for i in range(1, len(children) + 1)]
    for child in children:
        params = child.data.params
        chosen = [v for k, v in params.items() if k.endswith(".choice")]
        assert sorted(child.info.run_name.split()[1].split("+")) == sorted(chosen)
        png = Path(client.download_artifacts(child.info.run_id, "predictions.png", str(tmp)))
        assert png_size(png.read_bytes()) == predictions_png_size(PREVIEW_IMAGES)
