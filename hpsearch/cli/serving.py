"""``hpsearch predict``, ``serve`` and ``ui``: the registered champion and the MLflow UI."""

from __future__ import annotations

import os
import sys

import click

from hpsearch.cli.common import (
    exec_command,
    fail,
    main,
    quiet_libraries,
    run_mlflow_cli,
    tracking_uri_option,
)
from hpsearch.errors import HpsearchError
from hpsearch.redact import redact_url

UI_PATH = "#/experiments?workflowType=machine_learning"

model_option = click.option(
    "--model", default=None,
    help="Registered model NAME or NAME@ALIAS (alias default: champion) [default: the "
         "champion registered last in the tracking store].")


@main.command(short_help="Classify image files with the champion (or any logged model).")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_option
@click.option("--run", "run_id", default=None,
              help="Use the model logged in this MLflow run instead of a registered one.")
@tracking_uri_option
def predict(images, model, run_id, tracking_uri) -> None:
    """Classify IMAGES (image files of any size: PNG, JPEG, WEBP, BMP, GIF, ...; .npy pixel
    arrays; or folders: the image files below them) with a registered or logged model.

    Prints which model answered (on stderr), then one line per image: the file, the class
    and its probability. A file that cannot be read or that the model refuses gets its own
    line on stderr, naming it and why, and the others are still predicted. Exit code 0 when
    at least one image was classified, 2 when none was.
    """
    quiet_libraries()
    from hpsearch.search.preflight import check_tracking_store
    from hpsearch.serving.predict import Prediction, predict_files
    from hpsearch.serving.uris import champion_model, model_uri
    from hpsearch.tracking.provenance import resolve_tracking_uri

    try:
        tracking = resolve_tracking_uri(tracking_uri)
        check_tracking_store(tracking)
        uri = model_uri(model or (None if run_id else champion_model(tracking)), run_id)
        predictions = predict_files(list(images), uri, tracking)
    except HpsearchError as exc:
        fail(str(exc))
    click.echo(f"model: {predictions.model}", err=True)
    width, answered = predictions.width, 0
    try:
        for result in predictions.results:  # printed as each request is answered
            if isinstance(result, Prediction):
                answered += 1
                click.echo(f"{result.source:<{width}}  {result.label:<12}  "
                           f"{result.probability:.3f}")
            else:
                click.echo(f"hpsearch: error: {result.source}: {result.reason}", err=True)
    except HpsearchError as exc:
        fail(str(exc))
    if not answered:
        sys.exit(2)


def listen_options(what: str, port: int, where: str):
    """``--host`` and ``--port`` of a server that ``what`` names."""

    def decorate(command):
        command = click.option("--port", type=int, default=port, show_default=True,
                               help=f"TCP port of the {what} ({where}).")(command)
        return click.option("--host", default="127.0.0.1", show_default=True,
                            help=f"Address to bind; 0.0.0.0 exposes the {what} to the "
                                 "network.")(command)

    return decorate


@main.command(short_help="Serve the champion over HTTP (mlflow models serve).")
@model_option
@listen_options("scoring server", 5001, "POST /invocations")
@tracking_uri_option
def serve(model, host, port, tracking_uri) -> None:
    """Serve the champion with `mlflow models serve --env-manager local`."""
    quiet_libraries()
    import mlflow

    from hpsearch.search.preflight import check_tracking_store
    from hpsearch.serving.uris import champion_model, check_registered, model_uri
    from hpsearch.tracking.provenance import resolve_tracking_uri

    tracking = resolve_tracking_uri(tracking_uri)
    try:
        check_tracking_store(tracking)
        uri = model_uri(model or champion_model(tracking))
        check_registered(uri, tracking)
    except HpsearchError as exc:
        fail(str(exc))
    env = {
        "MLFLOW_TRACKING_URI": tracking,
        # mlflow models serve execs uvicorn from PATH: this interpreter's must come first.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    click.echo(f"serving {uri} from {redact_url(tracking)} on "
               f"http://{host}:{port}/invocations (mlflow {mlflow.__version__})", err=True)
    sys.stderr.flush()
    run_mlflow_cli(["models", "serve", "-m", uri, "--env-manager", "local", "--host", host,
                    "--port", str(port)], env)


@main.command(short_help="Start the MLflow UI on the tracking store.")
@tracking_uri_option
@listen_options("UI", 5000, "http://HOST:PORT")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Server processes answering the UI (MLflow's default is 4).")
def ui(tracking_uri, host, port, workers) -> None:
    """Start the MLflow UI on the tracking store."""
    quiet_libraries()
    from hpsearch.search.preflight import check_sqlite_store
    from hpsearch.tracking.provenance import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        fail(f"{redact_url(uri)} is a tracking server: open it in a browser, it is the UI")
    try:
        check_sqlite_store(uri, "tracking store", "--tracking-uri")
    except HpsearchError as exc:
        fail(str(exc))
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "ui",
               "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", str(workers)]
    # MLflow 3's UI opens its GenAI pages unless the URL asks for model training.
    click.echo(f"MLflow UI for {redact_url(uri)}: open http://{host}:{port}/{UI_PATH}",
               err=True)
    env = os.environ | {
        # The UI needs none of MLflow's background job runners (GenAI scorers): 7 processes
        # less; and its server's deprecation warnings are for MLflow's developers.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # MLflow's FastAPI app imports starlette.middleware.wsgi, which Starlette deprecates
        # with a UserWarning of its own (StarletteDeprecationWarning, which a category
        # filter cannot name here: -W imports no module), so it is matched by its message.
        "PYTHONWARNINGS": "ignore::DeprecationWarning,"
                          "ignore:starlette.middleware.wsgi is deprecated",
    }
    exec_command(command, env)
