"""The ``hpsearch`` command line: parses options and calls into the package, nothing more."""

from __future__ import annotations

import logging
import os
import sys

import click

from hpsearch import __version__
from hpsearch.data_utils import list_datasets
from hpsearch.errors import HpsearchError, handle_termination_signals
from hpsearch.studies import SpecError

# Options several commands share, spelled once.
storage_option = click.option(
    "--storage", default="sqlite:///hpsearch.db", show_default=True, envvar="HPSEARCH_STORAGE",
    help="Optuna storage URL [env: HPSEARCH_STORAGE].")
tracking_uri_option = click.option(
    "--tracking-uri", default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None, envvar="HPSEARCH_DATA_DIR",
    help="Where the data set's files are or go [env: HPSEARCH_DATA_DIR].")


@click.group()
@click.version_option(__version__, prog_name="hpsearch")
def main() -> None:
    """MLflow-tracked hyperparameter search for image classifiers."""


@main.command()
@click.option("--dataset", default=None, help=(
    f"Data set whose built-in study to run: {', '.join(list_datasets())} "
    "(default: fashion_mnist)."))
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), default=None,
              help="Your own study spec (YAML); see hpsearch/studies/*.yaml.")
@click.option("--trials", type=int, default=50, show_default=True,
              help="Target number of finished (complete or pruned) trials in the study; "
                   "running the same command again resumes and runs only what is missing.")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Start no new trial after this many seconds.")
@click.option("--epochs", type=int, default=None, help="Most epochs per trial (spec default).")
@click.option("--train-subset", type=int, default=None, metavar="N",
              help="Train on only N training images (quick runs).")
@click.option("--study-name", default=None, help="Optuna study / MLflow experiment name "
                                                  "(default: the data set's name).")
@storage_option
@tracking_uri_option
@data_dir_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Training device; auto picks CUDA when present.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the sampler, the validation split and every trial. On CUDA a "
                   "rerun still differs in the last bits (cuDNN autotuning, atomic adds), "
                   "and so can its pruning decisions; see --deterministic.")
@click.option("--register-name", default=None,
              help="Registered model name for the champion (default: hpsearch-STUDY).")
@click.option("--max-failures", type=int, default=5, show_default=True,
              help="Stop after this many trials in a row failed with an error.")
@click.option("--heartbeat-interval", type=int, default=10, show_default=True,
              help="Seconds between a running trial's heartbeats; a trial silent for 3 "
                   "intervals (its worker was killed) is retried.")
@click.option("--jobs", type=int, default=None,
              help="Trials run at once, each in its own worker process [default: 1 on a "
                   "CPU, up to 4 on a GPU].")
@click.option("--compile", "compile_model", is_flag=True,
              help="Train through torch.compile (compiled afresh in every trial; measured "
                   "slower than eager on a 2-core CPU, see docs/benchmarks.md).")
@click.option("--compile-mode", type=click.Choice(["default", "reduce-overhead",
                                                   "max-autotune"]),
              default="default", show_default=True,
              help="torch.compile mode with --compile; reduce-overhead and max-autotune "
                   "use CUDA graphs on a GPU.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=False, show_default=True,
              help="On CUDA, capture each trial's whole training step in a CUDA graph and "
                   "replay it per batch (eager where capture fails, with the reason). Off "
                   "until measured faster on a GPU.")
@click.option("--deterministic", is_flag=True,
              help="Bit-identical reruns with the same --seed on the same GPU and "
                   "software: deterministic algorithms, no cuDNN autotuning; slower.")
@click.option("--quiet", is_flag=True, help="One line per trial instead of per epoch.")
def run(dataset, spec_path, trials, timeout_s, epochs, train_subset, study_name, storage,
        tracking_uri, data_dir, device, seed, register_name, max_failures, heartbeat_interval,
        jobs, compile_model, compile_mode, cuda_graphs, deterministic, quiet) -> None:
    """Search hyperparameters, track every trial in MLflow, register the best model.

    Ctrl-C or SIGTERM ends the running trial as failed (interrupted), prints the summary so
    far and exits with 130 or 143; the same command again resumes the study.
    """
    _quiet_libraries()
    _headless()
    handle_termination_signals()  # SIGTERM unwinds like Ctrl-C: the stores stay consistent
    from hpsearch.api import run as run_api

    try:
        summary = run_api(
            dataset=dataset, spec=spec_path, trials=trials, epochs=epochs,
            timeout_s=timeout_s, train_subset=train_subset, study_name=study_name,
            storage=storage, tracking_uri=tracking_uri, data_dir=data_dir, device=device,
            seed=seed, register_name=register_name, max_failures=max_failures,
            heartbeat_interval_s=heartbeat_interval, jobs=jobs, compile=compile_model,
            compile_mode=compile_mode, cuda_graphs=cuda_graphs, deterministic=deterministic,
            quiet=quiet)
    except (HpsearchError, SpecError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:  # before the study started: nothing to summarise
        sys.exit(getattr(exc, "exit_code", 130))
    _print_summary(summary)
    if summary.exit_code:
        click.echo("finished trials are kept: run the same command to resume", err=True)
        sys.exit(summary.exit_code)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", default="hpsearch-fashion_mnist", show_default=True,
              help="Registered model NAME or NAME@ALIAS (alias default: champion).")
@click.option("--run", "run_id", default=None,
              help="Use the model logged in this MLflow run instead of a registered one.")
@tracking_uri_option
def predict(images, model, run_id, tracking_uri) -> None:
    """Classify IMAGES (PNG/JPEG files or .npy arrays) with a registered or logged model."""
    _quiet_libraries()
    from hpsearch.serving.predict import predict_files
    from hpsearch.serving.uris import model_uri

    try:
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise HpsearchError(f"no such file: {', '.join(missing)}")
        predictions = predict_files(list(images), model_uri(model, run_id), tracking_uri)
    except HpsearchError as exc:
        _fail(str(exc))
    width = max(len(p.source) for p in predictions)
    for p in predictions:
        click.echo(f"{p.source:<{width}}  {p.label:<12}  {p.probability:.3f}")


@main.command()
@click.option("--model", default="hpsearch-fashion_mnist", show_default=True,
              help="Registered model NAME or NAME@ALIAS (alias default: champion).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the model to the network.")
@click.option("--port", type=int, default=5001, show_default=True)
@tracking_uri_option
def serve(model, host, port, tracking_uri) -> None:
    """Serve the champion with `mlflow models serve --env-manager local`."""
    _quiet_libraries()
    import mlflow

    from hpsearch.serving.uris import model_uri
    from hpsearch.tracking.provenance import resolve_tracking_uri

    uri, tracking = model_uri(model), resolve_tracking_uri(tracking_uri)
    try:
        _check_model_exists(uri, tracking)
    except HpsearchError as exc:
        _fail(str(exc))
    bin_dir = os.path.dirname(sys.executable)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tracking,
        # mlflow models serve execs uvicorn from PATH: this interpreter's must come first.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", uri,
               "--env-manager", "local", "--host", host, "--port", str(port)]
    click.echo(f"serving {uri} from {tracking} on http://{host}:{port}/invocations "
               f"(mlflow {mlflow.__version__})", err=True)
    _exec(command, env)


@main.command()
@storage_option
def studies(storage) -> None:
    """List the studies in a storage with their trial counts and best value."""
    _quiet_libraries()
    from hpsearch.tracking.tables import study_overview

    overview = _with_storage(storage, study_overview)
    if overview.empty:
        click.echo(f"no studies in {storage}")
        return
    click.echo(overview.to_string(index=False, na_rep="-"))


@main.command()
@click.argument("study_name")
@storage_option
@tracking_uri_option
@click.option("--register-name", default=None,
              help="Registered model name (default: hpsearch-STUDY_NAME).")
@data_dir_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where to evaluate the model on the test set.")
def register(study_name, storage, tracking_uri, register_name, data_dir, device) -> None:
    """Register the best trial of STUDY_NAME as a new champion version.

    `hpsearch run` registers by itself when its study is done; this re-registers on demand
    (say, after a worker died while registering, or to a new --register-name).
    """
    _quiet_libraries()
    _headless()
    handle_termination_signals()
    from hpsearch.search.study import register_study

    try:
        registration = register_study(
            study_name=study_name, storage=storage, tracking_uri=tracking_uri,
            register_name=register_name or f"hpsearch-{study_name}", data_dir=data_dir,
            device=device)
    except HpsearchError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", 130))
    click.echo(f"registered {registration.name} version {registration.version} "
               f"(alias champion): trial {registration.trial_number}, test accuracy "
               f"{registration.test_accuracy:.4f}")


@main.command()
@click.argument("study_name")
@storage_option
@click.option("--top", type=int, default=20, show_default=True, help="Rows to show (0: all).")
def show(study_name, storage, top) -> None:
    """Print the leaderboard of STUDY_NAME's trials, best first."""
    _quiet_libraries()
    from hpsearch.search.storage import load_existing_study
    from hpsearch.tracking.tables import leaderboard

    board = _with_storage(storage, lambda url: leaderboard(load_existing_study(study_name, url)))
    shown = board if top <= 0 else board.head(top)
    click.echo(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    if len(shown) < len(board):
        click.echo(f"({len(board) - len(shown)} more; --top 0 shows all)")


@main.command()
@tracking_uri_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the UI to the network.")
@click.option("--port", type=int, default=5000, show_default=True)
def ui(tracking_uri, host, port) -> None:
    """Start the MLflow UI on the tracking store."""
    _quiet_libraries()
    from hpsearch.tracking.provenance import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        _fail(f"{uri} is a tracking server: open it in a browser, it is the UI")
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "ui",
               "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    click.echo(f"MLflow UI for {uri} on http://{host}:{port}", err=True)
    # The UI needs none of MLflow's background job runners (GenAI scorers): 7 processes less.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    _exec(command, env)


def _exec(command: list[str], env: dict[str, str]) -> None:
    """Become ``command``: Ctrl-C and SIGTERM then reach MLflow's server itself, which
    stops its own workers; a child process would be orphaned with them instead."""
    sys.stderr.flush()
    os.execve(command[0], command, env)


def _with_storage(storage: str, read):
    """Run ``read(storage)``, turning an unusable storage into one clear error."""
    if storage.startswith("sqlite:///") and not os.path.exists(storage[len("sqlite:///"):]):
        _fail(f"no Optuna storage at {storage}; run `hpsearch run` first or pass --storage")
    try:
        return read(storage)
    except HpsearchError as exc:
        _fail(str(exc))
    except Exception as exc:  # SQLAlchemy's errors vary by driver; name the URL
        _fail(f"cannot read Optuna storage {storage}: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0]}")


def _check_model_exists(uri: str, tracking_uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/") or "@" not in uri:
        return
    name, alias = uri[len("models:/"):].split("@", 1)
    try:
        MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        raise HpsearchError(f"no registered model {name!r} with alias {alias!r} in "
                            f"{tracking_uri}; run `hpsearch run` first, or pass --model "
                            "and --tracking-uri") from None


def _quiet_libraries() -> None:
    """Keep MLflow's info logs and download bars out of the progress display."""
    # Read by MLflow when it is first imported, so this must run before that import.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Runs started through a tracking server would print a "View run" link each.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _headless() -> None:
    """This process draws figures for files only: no display, whatever $DISPLAY says."""
    import matplotlib

    matplotlib.use("Agg")


def _fail(message: str) -> None:
    click.echo(f"hpsearch: error: {message}", err=True)
    sys.exit(2)


def _print_summary(summary) -> None:
    from hpsearch.search.progress import format_params

    echo = click.echo
    echo(f"\nstudy {summary.study_name!r}: {summary.n_complete} complete, {summary.n_pruned} "
         f"pruned, {summary.n_failed} failed  ({summary.wall_seconds:.1f} s)")
    if summary.stop_reason:
        echo(f"stopped early: {summary.stop_reason}")
    if summary.best_value is None:
        echo("no trial completed, so no model was registered")
        return
    echo(f"best {summary.metric} {summary.best_value:.4f} (trial {summary.best_trial}): "
         f"{format_params(summary.best_params)}")
    if summary.reached_best is not None:
        seconds, trial = summary.reached_best
        echo(f"within 0.5 points of it after {seconds:.1f} s of the study (trial {trial})")
    reg = summary.registration
    if reg is not None:
        echo(f"test accuracy {reg.test_accuracy:.4f}")
        what = "registered" if reg.newly_registered else "already registered"
        echo(f"{what}: {reg.name} version {reg.version} (alias champion)")
        uri = summary.tracking_uri
        echo("\nnext:")
        if uri.startswith(("http://", "https://")):
            echo(f"  open {uri} in a browser   # the tracking server's UI")
        else:
            echo(f"  hpsearch ui --tracking-uri {uri}   # or: mlflow ui --backend-store-uri "
                 f"{uri}")
        echo(f"  hpsearch serve --model {reg.name} --tracking-uri {uri}   # or:")
        echo(f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{reg.name}@champion "
             f"--env-manager local --host 127.0.0.1 --port 5001")


@main.group()
def spec() -> None:
    """Study specs: the JSON Schema of a spec file, and the built-in specs to copy."""


@spec.command("schema")
def spec_schema_command() -> None:
    """Print the JSON Schema of a study spec file (for editors: validation, completion)."""
    import json

    from hpsearch.studies import spec_schema

    click.echo(json.dumps(spec_schema(), indent=2))


@spec.command("show")
@click.argument("name")
def spec_show(name) -> None:
    """Print built-in spec NAME (fashion_mnist, mnist, cifar10) as YAML, to copy and edit."""
    from hpsearch.studies import builtin_spec_text

    try:
        click.echo(builtin_spec_text(name), nl=False)
    except ValueError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
