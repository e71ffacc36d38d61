"""``hpsearch studies``, ``show``, ``register`` and ``spec``: what is in a storage, and study
files. The read-only commands import neither torch nor MLflow."""

from __future__ import annotations

import sys

import click

from hpsearch.cli.common import (
    cache_dir_option,
    data_dir_option,
    describe_test_accuracy,
    device_option,
    echo_table,
    fail,
    format_option,
    headless,
    main,
    quiet_libraries,
    storage_option,
    tracking_uri_option,
    with_storage,
)
from hpsearch.errors import DiskFull, HpsearchError, handle_termination_signals
from hpsearch.redact import redact_url


@main.command(short_help="List the studies of a storage: trials by state, best value.")
@storage_option
@format_option
def studies(storage, output_format) -> None:
    """List the studies in a storage with their trial counts and best value."""
    quiet_libraries()
    from hpsearch.tracking.tables import study_overview

    overview = with_storage(storage, study_overview)
    if overview.empty and output_format == "table":
        click.echo(f"no studies in {redact_url(storage)}")
        return
    echo_table(overview, output_format)


@main.command(short_help="A study's leaderboard, best trial first.")
@click.argument("study_name")
@storage_option
@click.option("--top", type=int, default=20, show_default=True, help="Rows to show (0: all).")
@format_option
def show(study_name, storage, top, output_format) -> None:
    """Print the leaderboard of STUDY_NAME's trials, best first: state, value, epochs,
    seconds, why a trial was pruned or failed, its parameters and what it cost."""
    quiet_libraries()
    from hpsearch.search.storage import load_existing_study
    from hpsearch.tracking.tables import leaderboard

    board = with_storage(storage, lambda url: leaderboard(load_existing_study(study_name, url)))
    shown = board if top <= 0 else board.head(top)
    echo_table(shown, output_format)
    if len(shown) < len(board) and output_format == "table":
        click.echo(f"({len(board) - len(shown)} more; --top 0 shows all)")


@main.command(short_help="Register a study's best trial again as the champion.")
@click.argument("study_name")
@storage_option
@tracking_uri_option
@click.option("--register-name", default=None,
              help="Registered model name (default: hpsearch-STUDY_NAME).")
@data_dir_option
@cache_dir_option
@device_option("Where to evaluate the model on the test set.")
def register(study_name, storage, tracking_uri, register_name, data_dir, cache_dir,
             device) -> None:
    """Register the best trial of STUDY_NAME as a new champion version.

    `hpsearch run` registers by itself when its study is done; this re-registers on demand
    (say, after a worker died while registering, or to a new --register-name).
    """
    quiet_libraries()
    headless()
    handle_termination_signals()
    from hpsearch.search.study import register_study

    try:
        registration = register_study(
            study_name=study_name, storage=storage, tracking_uri=tracking_uri,
            register_name=register_name or f"hpsearch-{study_name}", data_dir=data_dir,
            device=device, cache_dir=cache_dir)
    except HpsearchError as exc:
        fail(exc)
    except DiskFull as exc:
        fail(f"{exc}; free some space there and run the same command again",
             exit_code=exc.exit_code)
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", 130))
    click.echo(f"registered {registration.name} version {registration.version} "
               f"(alias champion): trial {registration.trial_number}, test accuracy "
               f"{registration.test_accuracy:.4f} {describe_test_accuracy(registration)}")


@main.group(short_help="Study spec files: their JSON Schema, the built-in ones.")
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
    """Print built-in spec NAME (fashion_mnist, mnist, cifar10; own_images: the study of a
    folder of your own images) as YAML, to copy and edit."""
    from hpsearch.studies import builtin_spec_text

    try:
        click.echo(builtin_spec_text(name), nl=False)
    except ValueError as exc:
        fail(str(exc))
