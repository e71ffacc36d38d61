"""Session fixtures for scale-out tests: a throwaway PostgreSQL cluster and an ``mlflow server``
on loopback, the two services that several ``hpsearch run`` workers on several machines share.

PostgreSQL: Debian's server binaries (``/usr/lib/postgresql/*/bin``, package ``postgresql``,
which ``.ci/run`` installs) run a fresh cluster in a temporary directory on a free loopback
port, with trust authentication: the cluster lives for one session and listens only on
127.0.0.1. Without the binaries the tests that use it are skipped, or fail when ``CI`` is set.

MLflow: ``mlflow server`` with the cluster's ``mlflow`` database as backend store and artifacts
proxied to a local directory, so its clients need no disk in common with it.

The context managers ``running_postgres`` and ``running_mlflow_server`` work outside pytest too
(``benchmarks/logging_latency.py --start-servers`` uses them).

This directory has an ``__init__.py`` (``tests/reliability`` has none) so that this file is
imported as ``scaleout.conftest`` and ``from conftest import ...`` still finds
``tests/conftest.py``; without it both would be the module ``conftest`` and the import would
find this half-imported file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import clean_env, free_port

PG_SUPERUSER = "postgres"  # the cluster's superuser role, in every URL
DATABASES = ("optuna", "mlflow")  # Optuna storage, MLflow backend store
# Durability off: a test cluster is thrown away, and fsync per commit costs seconds per study.
FAST_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
LOG_TAIL_CHARS = 3000


def postgres_bin_dir() -> Path | None:
    """The newest Debian ``/usr/lib/postgresql/VERSION/bin``, else the directory of ``initdb``
    on PATH (other distributions), else None."""
    debian = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if debian:
        return max(debian, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return f"({path} does not exist)"


@dataclass(frozen=True)
class Postgres:
    """A running throwaway PostgreSQL cluster on 127.0.0.1.

    Attributes:
        port: TCP port on 127.0.0.1.
        bin_dir: the server's binaries (``createdb``, ``psql``, ``pg_ctl``, ...).
        data_dir: the cluster's data directory.
        log_path: the server's log file.
    """

    port: int
    bin_dir: Path
    data_dir: Path
    log_path: Path

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` for the superuser (trust authentication)."""
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def optuna_url(self) -> str:
        return self.url("optuna")

    @property
    def mlflow_url(self) -> str:
        return self.url("mlflow")

    def create_database(self, name: str) -> str:
        """Create an empty database (e.g. a fresh Optuna storage for one test); return its URL.

        Raises:
            subprocess.CalledProcessError: it exists already, or the server is gone.
        """
        subprocess.run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", PG_SUPERUSER, name], check=True, capture_output=True, text=True)
        return self.url(name)


def _cluster_owner() -> str | None:
    """The user that runs the server when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(user).pw_name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither user 'postgres' nor 'nobody' exists")


def _run_as(owner: str | None, command: list[str], cwd: Path) -> None:
    if owner is not None:
        command = ["runuser", "-u", owner, "--", *command]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n"
                           f"{result.stdout[-LOG_TAIL_CHARS:]}{result.stderr[-LOG_TAIL_CHARS:]}")


@contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[Postgres]:
    """Start a fresh cluster with the databases in ``DATABASES``; stop and delete it on exit.

    Args:
        durable: keep PostgreSQL's default fsync settings (for benchmarks); the default turns
            fsync, synchronous commit and full-page writes off.

    Raises:
        FileNotFoundError: no PostgreSQL server binaries.
        RuntimeError: initdb, pg_ctl or createdb failed (their output and the log included).
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin "
                                "or initdb on PATH); on Debian: apt-get install postgresql")
    owner = _cluster_owner()
    # Under /tmp rather than pytest's tmp_path: the cluster owner must reach it, and
    # /tmp/pytest-of-root is mode 0700. The Unix socket path must also stay under 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
    if owner is not None:
        shutil.chown(base, user=owner, group=pwd.getpwnam(owner).pw_gid)
    pg = Postgres(port=free_port(), bin_dir=bin_dir, data_dir=base / "data",
                  log_path=base / "postgres.log")
    options = f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {base}"
    options += "" if durable else f" {FAST_SETTINGS}"
    started = False
    try:
        _run_as(owner, [str(bin_dir / "initdb"), "-D", str(pg.data_dir), "-U", PG_SUPERUSER,
                        "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], base)
        try:
            _run_as(owner, [str(bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "-l",
                            str(pg.log_path), "-o", options, "-w", "-t", "60", "start"], base)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\npostgres log:\n{log_tail(pg.log_path)}") from None
        started = True
        for database in DATABASES:
            pg.create_database(database)
        yield pg
    finally:
        try:
            if started:
                _run_as(owner, [str(bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "-m", "fast",
                                "-w", "stop"], base)
        finally:
            shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server`` on 127.0.0.1.

    Attributes:
        url: tracking URI for clients, ``http://127.0.0.1:PORT``.
        artifacts_dir: its ``--artifacts-destination``; runs' artifacts land in
            ``artifacts_dir / EXPERIMENT_ID / RUN_ID / "artifacts"``.
        process: the ``mlflow server`` process (leader of its own process group).
        log_path: its stdout and stderr.
    """

    url: str
    artifacts_dir: Path
    process: subprocess.Popen
    log_path: Path

    def local_path(self, artifact_uri: str) -> Path:
        """Where a proxied artifact URI (``mlflow-artifacts:/1/RUN/artifacts/x.png``) lies on
        the server's disk."""
        prefix = "mlflow-artifacts:"
        assert artifact_uri.startswith(prefix), artifact_uri
        return self.artifacts_dir / artifact_uri.removeprefix(prefix).lstrip("/")


def _wait_for_health(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {server.process.returncode}:\n"
                               f"{log_tail(server.log_path)}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s} s:\n"
                       f"{log_tail(server.log_path)}")


@contextmanager
def running_mlflow_server(backend_store_uri: str, base: Path, *, workers: int = 1,
                          timeout_s: float = 180) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` (artifacts proxied to ``base / "artifacts"``), wait for
    ``/health``; stop its process group on exit.

    Args:
        backend_store_uri: e.g. ``Postgres.mlflow_url``; the server creates its schema there.
        base: an existing directory for its artifacts, log and working directory.
        workers: uvicorn worker processes (MLflow's default 4 is too many for a 2-core box).
        timeout_s: seconds to wait for ``/health`` (schema creation included).

    Raises:
        RuntimeError: the server exited or was not healthy in time (its log included).
    """
    port = free_port()
    artifacts_dir = base / "artifacts"
    log_path = base / "mlflow-server.log"
    command = [str(Path(sys.executable).with_name("mlflow")), "server",
               "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts_dir),
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    # No job runner: MLflow's server jobs (GenAI scorers, trace archival) are not used here,
    # and it would start 7 more processes (huey consumers) on a small test machine.
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log_path, "w") as log:
        # A file, not a pipe: nobody reads a pipe during the session, and a full one would
        # block the server. Own process group: `mlflow server` runs uvicorn as a child.
        process = subprocess.Popen(command, cwd=base, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", artifacts_dir, process, log_path)
    try:
        _wait_for_health(server, timeout_s)
        yield server
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster with empty databases ``optuna`` and ``mlflow``."""
    if postgres_bin_dir() is None:
        reason = ("needs PostgreSQL's server binaries (Debian package postgresql; "
                  ".ci/run installs it)")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but this {reason}", pytrace=False)
        pytest.skip(reason)
    with running_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` on ``postgres.mlflow_url``, artifacts proxied to a temporary
    directory."""
    with running_mlflow_server(postgres.mlflow_url, tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the tails of the servers' logs."""
    report = (yield).get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("mlflow_server", "postgres"):
            if (server := funcargs.get(name)) is not None:
                report.sections.append((f"{name} log (tail)", log_tail(server.log_path)))
