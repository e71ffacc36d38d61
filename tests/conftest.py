"""Shared fixtures: one small real study through the CLI, and one model server for it; and the
two ways to run the command line: :func:`cli` in this process (click's CliRunner), for
everything that fails or answers before training, and :func:`hpsearch`, a real process.

The study is deterministic: every trial is enqueued, one of them with a learning rate so
small (1e-7) that its validation accuracy stays near chance (10%), and a
ThresholdPruner(lower=0.3) prunes any trial below 30% after its first epoch.

What a test does not look at is off for the whole suite (hpsearch.defaults): MLflow's
system-metrics sampling, the champion's pt2 ``network`` export and the PNG figures.
``study_dir`` runs with all three on, and tests/test_cli_end_to_end.py asserts them there;
a test that looks at a figure elsewhere turns figures on for its run (``EVERYTHING_ON``).
docs/development.md says how to write a fast test.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR
from hpsearch.defaults import (
    DOWNLOAD_WEIGHTS_ENV,
    EXPORT_NETWORK_ENV,
    FIGURES_ENV,
    SYSTEM_METRICS_ENV,
)

# Off in every test and every process a test starts (clean_env copies this environment),
# except where a test turns them on to assert them: see the module's docstring.
os.environ[SYSTEM_METRICS_ENV] = "0"
os.environ[EXPORT_NETWORK_ENV] = "0"
os.environ[FIGURES_ENV] = "0"
# No test uses the network, nor a developer's own torchvision cache: pretrained weights come
# from files the tests write (tests/pretrained_files.py), in a TORCH_HOME of their own.
os.environ[DOWNLOAD_WEIGHTS_ENV] = "0"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="hpsearch-tests-torch-home-")
# Each pytest process (xdist's workers too) made its own: it removes its own at exit.
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], ignore_errors=True)
EVERYTHING_ON = {SYSTEM_METRICS_ENV: "1", EXPORT_NETWORK_ENV: "1", FIGURES_ENV: "1"}

STUDY = "e2e"
MODEL = "hpsearch-e2e"
N_TRAIN = 2000
N_VAL = 6000  # 10% of Fashion-MNIST's 60,000 training images
SPEC = """
dataset: fashion_mnist
epochs: 2
pruner: {name: threshold, lower: 0.3}
search_space:
  lr: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}
  batch_size: [32, 128]
  depth: {type: int, low: 1, high: 2}
  width: [16]
  dropout: {type: float, low: 0.0, high: 0.2}
  arch: [mlp, cnn]
  optimizer: adamw
enqueue_trials:
  - {lr: 3.0e-3, batch_size: 128, depth: 1, dropout: 0.0, arch: mlp}
  - {lr: 1.0e-7, batch_size: 128, depth: 1, dropout: 0.0, arch: mlp}
  - {lr: 1.0e-2, batch_size: 32, depth: 2, dropout: 0.1, arch: cnn}
  - {lr: 2.0e-3, batch_size: 128, depth: 2, dropout: 0.0, arch: mlp}
"""
STUDY_ARGS = ("run", "--spec", "spec.yaml", "--study-name", STUDY, "--train-subset",
              str(N_TRAIN), "--device", "cpu", "--seed", "0")

def tiny_mlp_spec(epochs: int) -> str:
    """A spec of one-layer MLPs of width 16 (seconds per trial on a CPU), no pruning, only
    the learning rate searched: for tests of workers and stores, not of the search."""
    return f"""
dataset: fashion_mnist
epochs: {epochs}
pruner: none
search_space:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  batch_size: 128
  depth: 1
  width: 16
  dropout: 0.0
  arch: mlp
"""


needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without MLflow/hpsearch settings, with this interpreter's bin
    first on PATH (``mlflow models serve`` execs uvicorn from PATH)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "HPSEARCH_DATA_DIR", "HPSEARCH_STORAGE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def hpsearch(cwd: Path, *args: str, env: dict | None = None,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the installed ``hpsearch`` console script (or the module) in ``cwd``: a real
    process, which starts in 3-5 s (torch, MLflow). For what needs one: training, signals,
    exit codes as the shell sees them; anything else goes through :func:`cli`."""
    exe = Path(sys.executable).with_name("hpsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpsearch.cli"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout)


def signal_at_pause(proc: subprocess.Popen, point: str, signum: int, *,
                    times: int = 1) -> str:
    """Read ``proc``'s stderr until it has paused at ``point`` ``times`` times
    (``$HPSEARCH_TEST_PAUSE``: ``hpsearch-test: paused at POINT``), then send it ``signum``;
    returns the stderr read so far. ``proc`` is killed if that takes over 300 s."""
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    seen, pauses = [], 0
    try:
        for line in proc.stderr:
            seen.append(line)
            pauses += line.strip() == f"hpsearch-test: paused at {point}"
            if pauses == times:
                os.kill(proc.pid, signum)
                break
    finally:
        watchdog.cancel()
    return "".join(seen)


def cli(cwd: Path | str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``hpsearch ARGS`` in this process (click's CliRunner), in ``cwd``, with ``env`` (default
    :func:`clean_env`) as the whole environment: what :func:`hpsearch` returns, in
    milliseconds instead of a process start-up, for the cases that end before training
    (bad input, missing or corrupt stores, read-only commands).

    As from a process: the exit code, stdout and stderr apart, and the warnings the command
    raised on stderr (``path:line: Category: message``, Python's default filters). An
    exception the command lets out (a traceback, in a process) is raised here. A command
    that would start a server (``serve``, ``ui``) fails the test: use :func:`hpsearch`.
    What the command changes in this process is put back: working directory, environment,
    SIGINT/SIGTERM handlers, the unraisable hook, warning filters.
    """
    from unittest import mock

    from hpsearch.cli import main

    def no_server(*args, **kwargs):
        raise AssertionError("cli() ran a command to the point of starting a server: "
                             "use hpsearch(), a real process")

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    try:
        os.environ.clear()
        os.environ.update(env or clean_env())
        os.chdir(cwd)
        with warnings.catch_warnings(record=True) as raised, \
                mock.patch("hpsearch.cli.serving.exec_command", no_server), \
                mock.patch("hpsearch.cli.serving.run_mlflow_cli", no_server):
            warnings.resetwarnings()
            warnings.simplefilter("default")  # a process's filters: each warning once
            result = CliRunner().invoke(main, list(args), prog_name="hpsearch",
                                        catch_exceptions=False)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n"
                    for w in raised)
    return subprocess.CompletedProcess(["hpsearch", *args], result.exit_code, result.stdout,
                                       result.stderr + shown)


def post_images(url: str, images=None, *, raw: str | None = None,
                output: str | None = None) -> tuple[int, object]:
    """POST ``{"inputs": {"images": images}}`` (or the raw body) to /invocations; with
    ``output``, also ``"params": {"output": output}`` (``label``, the default answer,
    ``class_index`` or ``full``).

    Returns:
        (HTTP status, parsed JSON body on success or the error body as text).
    """
    payload = {"inputs": {"images": images}} | ({"params": {"output": output}} if output else {})
    body = raw if raw is not None else json.dumps(payload)
    request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (found first, so none is orphaned unseen):
    a watchdog's way out of a hung run whose worker processes would keep its pipes open."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    for each in found:
        try:
            os.kill(each, 9)
        except OSError:
            pass


def port_closes(port: int, timeout_s: float = 20) -> bool:
    """Whether nothing accepts connections on loopback ``port`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.2)
    return False


def wait_until_ready(port: int, server: subprocess.Popen, timeout_s: float = 120,
                     path: str = "/ping") -> None:
    """Poll ``path`` until the server answers; fail with its stderr if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"server not ready after {timeout_s} s")


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    """A directory holding a finished 3-trial study (defaults: sqlite stores in the cwd).

    Built once per test session, also under pytest-xdist: the first worker that needs it
    builds it in the session's shared temporary folder, the others wait for it and read it.
    Tests only read it (a test that resumes the study works on a copy: see
    :func:`copy_study_dir`)."""
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/run installs it)")
    return shared_once(tmp_path_factory, "e2e", _build_study)


def _build_study(cwd: Path) -> None:
    (cwd / "spec.yaml").write_text(SPEC)
    # As a user runs it: system metrics and the pt2 export on (asserted on these runs).
    result = hpsearch(cwd, *STUDY_ARGS, "--trials", "3", env=clean_env(**EVERYTHING_ON))
    (cwd / "first_run.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], None]) -> Path:
    """A folder ``name`` that ``build`` fills once per test session: under pytest-xdist in
    the folder all workers share (the others wait on a lock, then find it built); a build
    that fails leaves nothing, and the next worker that asks tries again."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's
    folder, done = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


def copy_study_dir(study_dir: Path, to: Path) -> Path:
    """A copy of the session's study folder to change (resume, add trials) without changing
    what the other tests read. MLflow's artifact locations are absolute: new runs of the
    copy write their artifacts under the original folder, in folders of their own."""
    shutil.copytree(study_dir, to, ignore=shutil.ignore_patterns("*.lock"))
    return to


@pytest.fixture(scope="session")
def tracking_uri(study_dir) -> str:
    return f"sqlite:///{study_dir / 'mlflow.db'}"


@pytest.fixture(scope="session")
def client(tracking_uri) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


@dataclass(frozen=True)
class Served:
    """A running model server and the registered version it serves."""

    url: str
    model_uri: str  # pinned to the version, so a later alias move does not matter
    version: str
    pid: int = 0  # of `mlflow models serve`; the server (uvicorn) is a process below it


@pytest.fixture(scope="session")
def served(study_dir, client, tracking_uri):
    """`mlflow models serve` on a free loopback port, as the README runs it."""
    version = client.get_model_version_by_alias(MODEL, "champion").version
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve",
         "-m", f"models:/{MODEL}/{version}", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=study_dir, env=clean_env(MLFLOW_TRACKING_URI=tracking_uri),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(port, server)
        yield Served(f"http://127.0.0.1:{port}", f"models:/{MODEL}/{version}", version,
                     server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


class RecompileLimitLog(logging.Handler):
    """Collects dynamo's "hit config.recompile_limit" warnings: dynamo then stops compiling
    a function and runs it eagerly."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage():
            self.hits.append(record.getMessage())


@pytest.fixture
def recompile_limit_log():
    """A :class:`RecompileLimitLog` on dynamo's logger for the test; dynamo's caches are
    cleared afterwards."""
    import torch

    handler, logger = RecompileLimitLog(), logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    torch.compiler.reset()

