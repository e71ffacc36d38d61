"""What the commands share: the command group, options spelled once, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from typing import NoReturn

import click

from hpsearch import __version__
from hpsearch.defaults import DATA_DIR_ENV, DEFAULT_STORAGE, DEVICES, STORAGE_ENV
from hpsearch.errors import ArgumentError, HpsearchError, error_line
from hpsearch.redact import redact_url

__all__ = ["cache_dir_option", "data_dir_option", "describe_test_accuracy", "device_option",
           "echo_table", "exec_command", "fail", "format_option", "headless", "main",
           "option_name", "quiet_libraries", "run_mlflow_cli", "storage_option",
           "tracking_uri_option", "with_storage"]

storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, envvar=STORAGE_ENV,
    help=f"Optuna storage URL [env: {STORAGE_ENV}].")
tracking_uri_option = click.option(
    "--tracking-uri", default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None, envvar=DATA_DIR_ENV,
    help=f"Where the data set's files are or go [env: {DATA_DIR_ENV}].")
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False), default=None,
    help="Own images: where decoded caches live [default: $HPSEARCH_CACHE_DIR, else "
         "$XDG_CACHE_HOME/hpsearch/cache].")


def device_option(help: str):
    """``--device auto|cpu|cuda``, default ``auto``."""
    return click.option("--device", type=click.Choice(DEVICES), default="auto",
                        show_default=True, help=help)
format_option = click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table",
    show_default=True, help="A table for people, or JSON (a list of objects) for scripts.")


@click.group(context_settings={"max_content_width": 100})
@click.version_option(__version__, prog_name="hpsearch")
def main() -> None:
    """MLflow-tracked hyperparameter search for image classifiers."""


def fail(error: str | Exception, exit_code: int = 2) -> NoReturn:
    """One line on stderr, exit code 2: bad input the user can fix (74: a full disk).

    ``error`` is the message, or an exception whose message it is; an
    :class:`~hpsearch.errors.ArgumentError` names the option (``--trials``), not the Python
    API's argument (``trials``).
    """
    if isinstance(error, ArgumentError):
        error = error.spelled(option_name)
    click.echo(f"hpsearch: error: {error}", err=True)
    sys.exit(exit_code)


def option_name(argument: str) -> str:
    """The command line's option for an argument of the Python API: ``--`` and dashes for
    underscores, without a unit suffix (``train_subset`` -> ``--train-subset``,
    ``timeout_s`` -> ``--timeout``, ``heartbeat_interval_s`` -> ``--heartbeat-interval``)."""
    return "--" + argument.removesuffix("_s").replace("_", "-")


def quiet_libraries() -> None:
    """Keep MLflow's info logs, download bars and the libraries' warnings out of the
    progress display."""
    # Read by MLflow when it is first imported, so this must run before that import.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Runs started through a tracking server would print a "View run" link each.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Deprecation notices of MLflow's, SQLAlchemy's, pandas' and torch's internals are for
    # their developers; this process's users cannot act on them.
    for module in ("mlflow", "sqlalchemy", "alembic", "pandas", "torch", "optuna", "pydantic"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")


def describe_test_accuracy(registration) -> str:
    """How the registered test accuracy was computed, and the autocast figure if any."""
    note = "(as served: float32 on the CPU"
    if registration.test_accuracy_autocast is not None:
        note += (f"; {registration.test_accuracy_autocast:.4f} under the training device's "
                 "autocast, as the trials were validated")
    return note + ")"


def headless() -> None:
    """This process draws figures for files only: no display, whatever $DISPLAY says."""
    import matplotlib

    matplotlib.use("Agg")


def exec_command(command: list[str], env: dict[str, str]) -> NoReturn:
    """Become ``command``: Ctrl-C and SIGTERM then reach MLflow's server itself, which
    stops its own workers; a child process would be orphaned with them instead."""
    sys.stderr.flush()
    os.execve(command[0], command, env)


class _Interrupted(SystemExit):
    """Ctrl-C in :func:`run_mlflow_cli`: a SystemExit, which click lets through (it turns a
    KeyboardInterrupt into "Aborted!" and exit code 1)."""


def _interrupted(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server is stopping: let it finish
    raise _Interrupted(128 + signum)


def run_mlflow_cli(args: list[str], env: dict[str, str], *, wait_s: float = 10.0) -> NoReturn:
    """Run MLflow's command line (``mlflow ARGS``) in this process, with ``env`` added to
    the environment, and exit with its exit code.

    In this process, as :func:`exec_command` would: Ctrl-C and SIGTERM reach the process
    that started MLflow's server, whose child gets them too (the terminal's Ctrl-C reaches
    the whole process group; SIGTERM through MLflow's parent-death signal). Ctrl-C ends it
    quietly with exit code 130 once the server has shut down (``wait_s`` seconds at most),
    where ``mlflow`` itself prints "Aborted!" and exits with 1.
    """
    os.environ.update(env)
    from mlflow.cli import cli

    signal.signal(signal.SIGINT, _interrupted)
    try:
        cli.main(args=args, prog_name="mlflow")
    except _Interrupted:
        _reap_children(wait_s)
        raise
    sys.exit(0)  # not reached: click exits itself


def _reap_children(wait_s: float) -> None:
    """Wait up to ``wait_s`` seconds for this process's children to exit, so that the
    server's last lines come before the shell's prompt."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:
            time.sleep(0.1)


def with_storage(storage: str, read):
    """Run ``read(storage)``, turning an unusable storage into one clear error."""
    from hpsearch.search.preflight import sqlite_file

    path = sqlite_file(storage)
    if path is not None and not path.exists():
        fail(f"no Optuna storage at {storage}; run `hpsearch run` first or pass --storage")
    try:
        return read(storage)
    except HpsearchError as exc:
        fail(str(exc))
    except Exception as exc:  # SQLAlchemy's errors vary by driver; name the URL
        fail(f"cannot read Optuna storage {redact_url(storage)}: {error_line(exc)}")


def echo_table(table, output_format: str) -> None:
    """A pandas table on stdout, as text or as a JSON list of row objects."""
    if output_format == "json":
        click.echo(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    else:
        click.echo(table.to_string(index=False, na_rep="-",
                                   float_format=lambda v: f"{v:.4g}"))
