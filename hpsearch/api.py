"""The Python API: ``hpsearch.run(...)`` from a notebook or a script, as ``hpsearch run`` from
the shell (the command line calls this function)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch import defaults
from hpsearch.errors import ArgumentError
from hpsearch.studies import StudySpec, load_builtin_spec, load_spec, own_images_spec

if TYPE_CHECKING:
    from hpsearch.search.config import RunConfig, StudySummary
    from hpsearch.search.progress import Reporter

__all__ = ["make_config", "run"]


def run(*, dataset: str | None = None, spec: str | Path | StudySpec | None = None,
        trials: int = 50, epochs: int | None = None, timeout_s: float | None = None,
        train_subset: int | None = None, study_name: str | None = None,
        storage: str | None = None, tracking_uri: str | None = None,
        data_dir: str | None = None, device: str = "auto", seed: int = 0,
        register_name: str | None = None, max_failures: int = 5,
        heartbeat_interval_s: int = 10, jobs: int | None = None, compile: bool = False,
        compile_mode: str = "default", cuda_graphs: bool = False,
        deterministic: bool = False, quiet: bool = False,
        checkpoint_dir: str | Path | None = None, image_size: int | None = None,
        dedupe: bool | None = None, cache_dir: str | Path | None = None,
        reporter: Reporter | None = None) -> StudySummary:
    """Run (or resume) a study and register its champion; the same as ``hpsearch run``.

    Example::

        import hpsearch

        summary = hpsearch.run(dataset="fashion_mnist", trials=10, epochs=3,
                               train_subset=10_000)
        print(summary.best_value, summary.registration.test_accuracy)

        summary = hpsearch.run(dataset="./photos", trials=20)  # your own images

    Args:
        dataset: a registered data set whose built-in study to run (``fashion_mnist``,
            ``mnist``, ``cifar10``), or the path of a folder of your own images (one
            sub-folder per class) or of a .csv/.tsv/.jsonl manifest, whose built-in study is
            ``own_images`` (``hpsearch spec show own_images``); a registered name wins over
            a path of the same name. Default ``fashion_mnist`` unless ``spec`` is given.
        spec: a study spec file's path, or a :class:`~hpsearch.studies.StudySpec`.
        trials: the study's target number of finished (complete or pruned) trials.
        epochs: most epochs per trial (default: the spec's).
        timeout_s: start no new trial after this many seconds.
        train_subset: train on only this many training images.
        study_name: Optuna study and MLflow experiment name (default: the data set's; for
            own images the folder's or manifest's base name).
        storage: Optuna storage URL (default: ``$HPSEARCH_STORAGE``, else
            ``sqlite:///hpsearch.db``).
        tracking_uri: MLflow tracking URI (default: MLflow's: ``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db``).
        data_dir: where the data set's files are (default: ``$HPSEARCH_DATA_DIR``, Debian's
            copy, the download cache).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the sampler, the validation split and every trial.
        register_name: registered model name (default ``hpsearch-STUDY``).
        max_failures: stop after this many trials in a row failed with an error.
        heartbeat_interval_s: seconds between a running trial's heartbeats.
        jobs: trials run at once in worker processes (default: 1 on a CPU).
        compile: train through ``torch.compile``.
        compile_mode: ``torch.compile``'s mode with ``compile``: ``default``,
            ``reduce-overhead`` or ``max-autotune``.
        cuda_graphs: on CUDA, capture each trial's training step in a CUDA graph.
        deterministic: bit-identical reruns (deterministic algorithms, no cuDNN
            autotuning); process-wide, it stays on after the run.
        quiet: one progress line per trial instead of one per epoch.
        checkpoint_dir: where running trials save their training's state after every epoch,
            so that an interrupted trial continues from its last finished epoch (default:
            ``hpsearch-checkpoints`` beside a sqlite storage's file, else in the working
            directory). A trial's state is removed when it ends; never logged to MLflow.
        image_size: own images: the side of the square images the cache holds, pixels
            (8..1024; default: the spec's, else the images' median shorter side, clipped to
            16..224, rounded down to a multiple of 8).
        dedupe: own images: drop images that are also in an earlier split from val and
            test (default: the spec's, else False).
        cache_dir: own images: where decoded caches live (default: ``$HPSEARCH_CACHE_DIR``,
            else ``$XDG_CACHE_HOME/hpsearch/cache``).
        reporter: where progress goes (default: stderr).

    Returns:
        The :class:`~hpsearch.search.config.StudySummary`: trial counts, the best trial, the
        registered champion and its test accuracy (``summary.registration``). After Ctrl-C
        the summary so far, with ``exit_code`` 130.

    Raises:
        ArgumentError: a bad argument; the message names it (``trials must be >= 1, got
            0``). A :class:`~hpsearch.errors.HpsearchError`.
        HpsearchError: missing or corrupt data (own images: a path that cannot be used at
            all), unusable stores, a bad ``$HPSEARCH_...`` setting (:mod:`hpsearch.defaults`);
            raised before anything is written.
        SpecError: an invalid spec file (its message names file, key and reason).
        DiskFull: no space left where the study writes; it stopped, its finished trials
            are kept (``hpsearch run`` exits with 74).

    Nothing global is left changed: MLflow's tracking URI and Optuna's verbosity are the
    caller's again when it returns, and no signal handler is installed.
    """
    # The spec and the arguments are checked before the study's modules (torch, Optuna,
    # MLflow) are imported: bad input is refused at once, in little memory.
    config = make_config(
        dataset=dataset, spec=spec, trials=trials, epochs=epochs, timeout_s=timeout_s,
        train_subset=train_subset, study_name=study_name, storage=storage,
        tracking_uri=tracking_uri, data_dir=data_dir, device=device, seed=seed,
        register_name=register_name, max_failures=max_failures,
        heartbeat_interval_s=heartbeat_interval_s, jobs=jobs, compile=compile,
        compile_mode=compile_mode, cuda_graphs=cuda_graphs, deterministic=deterministic,
        checkpoint_dir=checkpoint_dir, image_size=image_size, dedupe=dedupe,
        cache_dir=cache_dir)
    from hpsearch.search.progress import Reporter
    from hpsearch.search.study import run_study

    return run_study(config, reporter or Reporter(config.spec.metric, verbose=not quiet))


def make_config(*, dataset: str | None, spec: str | Path | StudySpec | None, trials: int,
                epochs: int | None, timeout_s: float | None, train_subset: int | None,
                study_name: str | None, storage: str | None, tracking_uri: str | None,
                data_dir: str | None, device: str, seed: int, register_name: str | None,
                max_failures: int, heartbeat_interval_s: int, jobs: int | None,
                compile: bool, compile_mode: str = "default", cuda_graphs: bool = False,
                deterministic: bool = False,
                checkpoint_dir: str | Path | None = None, image_size: int | None = None,
                dedupe: bool | None = None,
                cache_dir: str | Path | None = None) -> RunConfig:
    """Check the arguments of :func:`run` and resolve them into a ``RunConfig``.

    Raises:
        ArgumentError: a value out of range, ``dataset`` disagreeing with the spec, a
            dataset that is neither registered nor an existing path, or an own-images
            option with a registered data set.
        HpsearchError: a bad ``$HPSEARCH_...`` setting.
        SpecError: an invalid spec file.
    """
    from hpsearch.search.config import RunConfig

    study_spec = _with_image_options(_resolve_spec(dataset, spec, epochs), image_size, dedupe)
    if cache_dir is not None and study_spec.images is None:
        raise ArgumentError("{cache_dir} is for your own images (a folder or manifest as "
                            "{dataset}); {name} is a registered data set",
                            name=study_spec.dataset)
    at_least_1 = {"trials": trials, "train_subset": train_subset, "max_failures": max_failures,
                  "heartbeat_interval_s": heartbeat_interval_s, "jobs": jobs}
    for name, value in at_least_1.items():
        if value is not None and value < 1:
            raise ArgumentError(f"{{{name}}} must be >= 1, got {{value}}", value=value)
    if timeout_s is not None and timeout_s <= 0:
        raise ArgumentError("{timeout_s} must be > 0 seconds, got {value:g}", value=timeout_s)
    from hpsearch.training.compiled import COMPILE_MODES

    if compile_mode not in COMPILE_MODES:
        raise ArgumentError("{compile_mode} {value!r}: choose one of {modes}",
                            value=compile_mode, modes=", ".join(COMPILE_MODES))
    if compile_mode != "default" and not compile:
        raise ArgumentError("{compile_mode} {value} needs {compile}", value=compile_mode)
    defaults.check_environment()
    study_name = study_name or _default_study_name(study_spec)
    return RunConfig(
        spec=study_spec, trials=trials, study_name=study_name,
        register_name=register_name or f"hpsearch-{study_name}",
        storage=defaults.storage_url(storage),
        tracking_uri=tracking_uri, timeout_s=timeout_s, train_subset=train_subset,
        data_dir=data_dir, device=device, seed=seed, max_consecutive_failures=max_failures,
        heartbeat_interval_s=heartbeat_interval_s, jobs=jobs, compile=compile,
        compile_mode=compile_mode, cuda_graphs=cuda_graphs, deterministic=deterministic,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        cache_dir=None if cache_dir is None else str(cache_dir))


def _resolve_dataset(dataset: str) -> str:
    """A registered data set's name, or the absolute path ``dataset`` names (relative to
    the working directory).

    Raises:
        ArgumentError: neither; the message lists the registered names and says a path
            must exist.
    """
    from hpsearch.data_utils.own_images import resolve_dataset

    try:
        return str(resolve_dataset(dataset))
    except ValueError as exc:
        raise ArgumentError("{dataset}: {reason}", reason=exc) from None


def _resolve_spec(dataset: str | None, spec: str | Path | StudySpec | None,
                  epochs: int | None) -> StudySpec:
    resolved = _resolve_dataset(str(dataset)) if dataset is not None else None
    if spec is not None:
        study_spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
        if resolved is not None and resolved != study_spec.dataset:
            raise ArgumentError("{dataset} {value} disagrees with {source}, which says "
                                "dataset: {found}", value=dataset, source=study_spec.source,
                                found=study_spec.dataset)
    elif resolved is not None and Path(resolved).is_absolute():
        study_spec = own_images_spec(resolved)
    else:
        try:
            study_spec = load_builtin_spec(resolved or "fashion_mnist")
        except ValueError as exc:
            raise ArgumentError("{dataset}: {reason}", reason=exc) from None
    if epochs is not None:
        if epochs < 1:
            raise ArgumentError("{epochs} must be >= 1, got {value}", value=epochs)
        study_spec = study_spec.replace(epochs=epochs)
    return study_spec


def _with_image_options(spec: StudySpec, image_size: int | None,
                        dedupe: bool | None) -> StudySpec:
    """``spec`` with ``--image-size`` and ``--dedupe`` applied (own images only).

    Raises:
        ArgumentError: either given with a registered data set, or an image size out of
            8..1024.
    """
    given = {"image_size": image_size, "dedupe": dedupe}
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return spec
    if spec.images is None:
        flags = " and ".join(f"{{{key}}}" for key in given)
        raise ArgumentError(f"{flags}: for your own images (a folder or manifest as "
                            "{dataset}); {name} is a registered data set", name=spec.dataset)
    if image_size is not None and not 8 <= image_size <= 1024:
        raise ArgumentError("{image_size} must be in 8..1024 pixels, got {value}",
                            value=image_size)
    return spec.replace(**given)


def _default_study_name(spec: StudySpec) -> str:
    """The data set's name; for own images the folder's (or manifest's) base name, never
    the whole path."""
    if spec.dataset_path is None:
        return spec.dataset
    from hpsearch.data_utils.own_images import dataset_display_name

    return dataset_display_name(spec.dataset_path)
