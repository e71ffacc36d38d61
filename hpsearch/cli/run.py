"""``hpsearch run``: a study from the command line (through :func:`hpsearch.api.run`)."""

from __future__ import annotations

import shlex
import sys

import click

from hpsearch.cli.common import (
    cache_dir_option,
    data_dir_option,
    describe_test_accuracy,
    device_option,
    fail,
    headless,
    main,
    quiet_libraries,
    storage_option,
    tracking_uri_option,
)
from hpsearch.data_utils import list_datasets
from hpsearch.errors import DiskFull, HpsearchError, handle_termination_signals
from hpsearch.redact import redact_url
from hpsearch.studies import SpecError, load_spec


@main.command(short_help="Search hyperparameters; track, register and resume.")
@click.option("--dataset", default=None, help=(
    f"Data set whose built-in study to run: {', '.join(list_datasets())}, or the path of a "
    "folder of your own images (a sub-folder per class) or of a .csv/.tsv/.jsonl manifest "
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
                                                  "(default: the data set's name; for your "
                                                  "own images the folder's).")
@storage_option
@tracking_uri_option
@data_dir_option
@device_option("Training device; auto picks CUDA when present.")
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
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Where running trials save their state after every epoch, so that an "
                   "interrupted trial continues from its last finished epoch [default: "
                   "hpsearch-checkpoints beside a sqlite storage's file, else in the "
                   "working directory].")
@click.option("--image-size", type=int, default=None, metavar="PX",
              help="Own images: side of the square images the cache holds, 8..1024 "
                   "[default: the spec's, else the median shorter side, clipped to 16..224, "
                   "rounded down to a multiple of 8].")
@click.option("--dedupe/--no-dedupe", default=None,
              help="Own images: drop images that are also in an earlier split from val and "
                   "test [default: the spec's, else no].")
@cache_dir_option
@click.option("--quiet", is_flag=True, help="One line per trial instead of per epoch.")
def run(dataset, spec_path, trials, timeout_s, epochs, train_subset, study_name, storage,
        tracking_uri, data_dir, device, seed, register_name, max_failures, heartbeat_interval,
        jobs, compile_model, compile_mode, cuda_graphs, deterministic, checkpoint_dir,
        image_size, dedupe, cache_dir, quiet) -> None:
    """Search hyperparameters, track every trial in MLflow, register the best model.

    --dataset takes a registered data set or a folder (or manifest) of your own images: the
    first run decodes them once into a cache (files that cannot be used are skipped and
    listed in the run's data/skipped.csv); a path that cannot be used at all exits with 2.

    Ctrl-C or SIGTERM ends the running trial as failed (interrupted), prints the summary so
    far and exits with 130 or 143; the same command again resumes the study, and the
    interrupted trial first, from its last finished epoch. A full disk stops the study
    with one line and exit code 74 (finished trials are kept).
    """
    quiet_libraries()
    try:
        # Before torch, Optuna and MLflow are imported: a hostile file is refused in a
        # fraction of a second and in the memory of click, pydantic and PyYAML.
        spec = load_spec(spec_path) if spec_path is not None else None
    except SpecError as exc:
        fail(str(exc))
    headless()
    handle_termination_signals()  # SIGTERM unwinds like Ctrl-C: the stores stay consistent
    from hpsearch.api import run as run_api

    try:
        summary = run_api(
            dataset=dataset, spec=spec, trials=trials, epochs=epochs,
            timeout_s=timeout_s, train_subset=train_subset, study_name=study_name,
            storage=storage, tracking_uri=tracking_uri, data_dir=data_dir, device=device,
            seed=seed, register_name=register_name, max_failures=max_failures,
            heartbeat_interval_s=heartbeat_interval, jobs=jobs, compile=compile_model,
            compile_mode=compile_mode, cuda_graphs=cuda_graphs, deterministic=deterministic,
            checkpoint_dir=checkpoint_dir, image_size=image_size, dedupe=dedupe,
            cache_dir=cache_dir, quiet=quiet)
    except (HpsearchError, SpecError) as exc:
        fail(exc)
    except DiskFull as exc:
        fail(f"{exc}; the study stopped, its finished trials are kept: free some space there "
             "(or put the stores elsewhere with --storage and --tracking-uri, the image cache "
             "with --cache-dir) and run the same command to resume", exit_code=exc.exit_code)
    except KeyboardInterrupt as exc:  # before the study started: nothing to summarise
        sys.exit(getattr(exc, "exit_code", 130))
    _print_summary(summary)
    if summary.exit_code == 1:
        click.echo("the study stopped because its trials kept failing: fix the cause (each "
                   "failed trial's reason is above, its traceback.txt on its MLflow run), then "
                   "run the same command to resume; finished trials are kept")
    elif summary.exit_code:
        click.echo("finished trials are kept: run the same command to resume (interrupted "
                   "trials run again first, from their last finished epoch)")
    sys.exit(summary.exit_code)


def _print_summary(summary) -> None:
    from hpsearch.search.progress import format_params

    echo = click.echo
    interrupted = f", {summary.n_interrupted} interrupted" if summary.n_interrupted else ""
    echo(f"\nstudy {summary.study_name!r}: {summary.n_complete} complete, {summary.n_pruned} "
         f"pruned, {summary.n_failed} failed{interrupted}  ({summary.wall_seconds:.1f} s)")
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
        echo(f"test accuracy {reg.test_accuracy:.4f} {describe_test_accuracy(reg)}")
        what = "registered" if reg.newly_registered else "already registered"
        if reg.resumed:
            what += " (finishing the registration an interrupted run had started)"
        echo(f"{what}: {reg.name} version {reg.version} (alias champion)")
        uri = redact_url(summary.tracking_uri)  # a server's password stays in your shell
        # MLflow 3's UI opens its GenAI pages unless the URL asks for model training.
        page = f"#/experiments/{summary.experiment_id}/runs?workflowType=machine_learning"
        # Quoted for the shell, so a line pastes as it reads: a path with a space, a model
        # name with an accent.
        quoted_uri, model = shlex.quote(uri), shlex.quote(reg.name)
        echo("\nnext:")
        if uri.startswith(("http://", "https://")):
            echo(f"  open {uri.rstrip('/')}/{page}   # the tracking server's UI")
        else:
            echo(f"  hpsearch ui --tracking-uri {quoted_uri}   # then open "
                 f"http://127.0.0.1:5000/{page}")
        echo(f"  hpsearch serve --model {model} --tracking-uri {quoted_uri}   # or:")
        echo(f"  MLFLOW_TRACKING_URI={quoted_uri} mlflow models serve -m "
             f"{shlex.quote(f'models:/{reg.name}@champion')} --env-manager local "
             "--host 127.0.0.1 --port 5001")


