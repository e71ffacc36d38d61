"""The study runner: the one place that opens a study's device, data, Optuna storage, MLflow
tracker and objective, and runs trials until the study has its target.

Used by ``hpsearch run`` in one process, by each ``--jobs`` worker process, and by
``hpsearch register`` (:meth:`StudyRunner.open_existing`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import pickle
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from hpsearch import __version__
from hpsearch.data_utils import (
    ArraySplit,
    DataFileError,
    DataNotFoundError,
    DataOrigin,
    get_dataset_info,
    load_dataset_with_origin,
    split_train_val,
)
from hpsearch.errors import DiskFull, HpsearchError, check_interrupted, is_disk_full
from hpsearch.redact import redact_url
from hpsearch.search.callbacks import (
    AnytimeLogger,
    CheckpointSweeper,
    FailureGuard,
    ReportRefresher,
)
from hpsearch.search.checkpoints import CheckpointStore, default_checkpoint_root
from hpsearch.search.config import RunConfig, StudySummary, cpu_budget_command
from hpsearch.search.coordination import (
    StudyLock,
    claim_worker_number,
    count_trials,
    schema_lock,
    slots_left,
)
from hpsearch.search.diskspace import disk_full_error
from hpsearch.search.gpu_sharing import default_jobs
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.preflight import preflight
from hpsearch.search.pretrained import fetch_weights, fit_to_data, recorded_architectures
from hpsearch.search.progress import RemainingTime, Reporter, StudyEstimate
from hpsearch.search.storage import (
    close_runs_of_ended_processes,
    fail_stale_trials,
    load_existing_study,
    open_study,
    recorded_definition,
    retry_interrupted,
)
from hpsearch.serving.registration import Registration, register_champion
from hpsearch.studies.components import build_sampler
from hpsearch.tracking.provenance import dataset_inputs, provenance_tags, resolve_tracking_uri
from hpsearch.tracking.report import log_data_report
from hpsearch.tracking.runs import StudyTracker
from hpsearch.training.device import autocast_dtype, device_name, resolve_device

__all__ = ["StudyRunner", "default_jobs", "load_data"]


def load_data(dataset: str,
              data_dir: str | None) -> tuple[ArraySplit, ArraySplit, DataOrigin]:
    """The data set's official (train, test) splits, and where their files were read.

    Raises:
        HpsearchError: the files are missing, or present but unusable (the message names
            the file and what is wrong).
    """
    try:
        return load_dataset_with_origin(dataset, data_dir)
    except (DataNotFoundError, DataFileError, pickle.UnpicklingError) as exc:
        raise HpsearchError(str(exc)) from None


@dataclass
class StudyRunner:
    """A study opened for work: device, data, Optuna study, MLflow tracker, study lock.

    Build one with :meth:`open` (create or resume, from a :class:`RunConfig`) or
    :meth:`open_existing` (a study that must exist, for registering it again).
    """

    study: optuna.Study
    tracker: StudyTracker
    device: torch.device
    data: TrialData | None
    test: ArraySplit
    lock: StudyLock
    reporter: Reporter
    config: RunConfig | None = None
    data_origin: DataOrigin | None = None  # where the data set's files were read
    checkpoints: CheckpointStore | None = None

    @classmethod
    def open(cls, config: RunConfig, reporter: Reporter) -> StudyRunner:
        """Open (create or resume) the study ``config`` names, its data and stores, with
        the pretrained weights its trials need in torchvision's cache. The runner's
        ``config`` holds the spec as this study searches it
        (:mod:`~hpsearch.search.pretrained`: backbones left out, image sizes that fit).

        Raises:
            HpsearchError: bad device, missing or corrupt data, unusable storage or
                tracking store, an unwritable directory, or pretrained weights that are
                neither cached nor downloadable (``WeightsUnavailable``); raised before
                anything is written.
        """
        device = resolve_device(config.device, deterministic=config.deterministic)
        tracking_uri = resolve_tracking_uri(config.tracking_uri)
        preflight(config.storage, tracking_uri)  # in a second: before reading the data set
        # Before the data set and before any trial or --jobs worker: the weights every
        # trial reads from the cache (see hpsearch.search.pretrained).
        spec = fetch_weights(config.spec, reporter, recorded=_recorded_architectures(config))
        train, test, origin = load_data(spec.dataset, config.data_dir)
        train, val = split_train_val(train, val_fraction=spec.val_fraction,
                                     seed=config.seed, train_subset=config.train_subset)
        data = TrialData(info=get_dataset_info(spec.dataset), train=train, val=val)
        spec = fit_to_data(spec, data.info.shape.size, reporter)
        config = dataclasses.replace(config, spec=spec)
        checkpoints = CheckpointStore(
            config.checkpoint_dir or default_checkpoint_root(config.storage), config.study_name)
        checkpoints.check_writable()
        with schema_lock(config.storage, tracking_uri):
            study = open_study(config, tracking_uri)
            tracker = StudyTracker(tracking_uri=tracking_uri, study_name=config.study_name)
        _close_dead_runs(study, tracker, reporter)
        return cls(study=study, tracker=tracker, device=device, data=data, test=test,
                   lock=StudyLock(config.storage, config.study_name), reporter=reporter,
                   config=config, data_origin=origin, checkpoints=checkpoints)

    @classmethod
    def open_existing(cls, *, study_name: str, storage: str, tracking_uri: str | None,
                      data_dir: str | None, device: str, reporter: Reporter) -> StudyRunner:
        """Open a study that must exist, with its data set's test split (no training data).

        Raises:
            HpsearchError: no such study, its data set cannot be found, or the stores
                cannot be reached.
        """
        torch_device = resolve_device(device)
        tracking_uri = resolve_tracking_uri(tracking_uri)
        preflight(storage, tracking_uri)
        study = load_existing_study(study_name, storage)
        tracker = StudyTracker(tracking_uri=tracking_uri, study_name=study_name)
        _close_dead_runs(study, tracker, reporter)
        dataset = study.user_attrs.get("hpsearch.dataset") or _dataset_from_runs(tracker)
        _, test, origin = load_data(dataset, data_dir)
        return cls(study=study, tracker=tracker, device=torch_device, data=None, test=test,
                   lock=StudyLock(storage, study_name), reporter=reporter,
                   data_origin=origin)

    @property
    def dataset(self) -> str:
        return self.study.user_attrs.get("hpsearch.dataset") or self.config.spec.dataset

    def start_parent(self, role: str = "study", register_name: str | None = None) -> None:
        """Open this invocation's parent run: ``role`` ``study`` (``hpsearch run``) or
        ``register`` (``hpsearch register``, registering as ``register_name``)."""
        if role == "study":
            params, spec_yaml = self._run_params(), self.config.spec.to_yaml()
        else:
            params = {"study": self.study.study_name, "dataset": self.dataset,
                      "storage": redact_url(self.lock.storage_url),
                      "register_name": register_name}
            spec_yaml = None
        self.tracker.start_parent(params=params, spec_yaml=spec_yaml, role=role,
                                  run_tags=self._run_tags(), inputs=self._inputs())
        if role == "study":
            log_data_report(self.tracker.client, self.tracker.parent_run_id,
                            {"training": self.data.train, "validation": self.data.val,
                             "test": self.test}, self.data.info.class_names)

    def attach_parent(self, parent_run_id: str) -> None:
        """Nest this worker's trial runs under the coordinator's parent run (``--jobs``)."""
        self.tracker.attach_parent(parent_run_id, run_tags=self._run_tags(),
                                   inputs=self._inputs())

    def work(self, summary: StudySummary, *, deadline: float | None,
             refresh_reports: bool) -> None:
        """Take a trial slot, run the trial, until the study is done.

        A slot is taken under the study lock (see :mod:`~hpsearch.search.coordination`),
        so all workers together run exactly ``config.trials`` finished trials. When no slot
        is left but other workers still run trials, this worker stays: if one of them dies,
        its trial goes stale (no heartbeat), is failed and re-enqueued, and a waiting
        worker runs it. Returns when the study is done, at ``deadline`` (``time.time()``
        seconds), or when ``summary.stop_reason`` is set (too many failures in a row).
        """
        config, study, lock = self.config, self.study, self.lock
        worker = claim_worker_number(study, lock)
        with lock.hold():
            retried = retry_interrupted(study)
            trials_left = slots_left(study, config.trials)
        if retried and trials_left > 0:
            self.reporter.say(f"interrupted trial(s) {', '.join(map(str, retried))} run again "
                              f"first, with the same parameters; {self._continuations(retried)}")
        if worker:  # the study's first worker keeps --seed: a single run stays reproducible
            study.sampler = build_sampler(dict(config.spec.sampler), seed=config.seed + worker)
        estimate = None
        if refresh_reports and self.device.type == "cpu":  # the study's only process
            estimate = StudyEstimate(trials_left=trials_left, epochs=config.spec.epochs,
                                     device=device_name(self.device), reporter=self.reporter,
                                     smaller_command=cpu_budget_command(config))
        objective = Objective(spec=config.spec, data=self.data, device=self.device,
                              tracker=self.tracker, reporter=self.reporter, seed=config.seed,
                              compile_model=config.compile, compile_mode=config.compile_mode,
                              cuda_graphs=config.cuda_graphs, checkpoints=self.checkpoints,
                              on_timed_epoch=estimate)
        callbacks = [self.reporter.trial_finished, AnytimeLogger(self.tracker),
                     FailureGuard(config.max_consecutive_failures, summary),
                     CheckpointSweeper(self.tracker, self.reporter)]
        if refresh_reports:  # this is the study's only process
            callbacks += [ReportRefresher(self.tracker, study, self.reporter),
                          RemainingTime(target=config.trials, jobs=1, reporter=self.reporter,
                                        deadline=deadline)]

        disk_full: list[Exception] = []

        def start_trial(trial: optuna.Trial) -> float:
            lock.release()  # the trial holds its slot now: RUNNING in the storage
            try:
                return objective(trial)
            except Exception as exc:
                if is_disk_full(exc):  # the trial fails, then the study stops (below)
                    disk_full.append(exc)
                raise

        said_waiting = None
        while summary.stop_reason is None:
            check_interrupted()
            if deadline is not None and time.time() >= deadline:
                summary.stop_reason = f"timeout of {config.timeout_s:g} s reached"
                return
            with lock.hold():
                if slots_left(study, config.trials) > 0:
                    study.optimize(start_trial, n_trials=1, callbacks=callbacks,
                                   catch=(Exception,), gc_after_trial=True)
                    if disk_full:  # the next trial would fail the same way
                        raise disk_full[0]
                    _return_freed_memory()
                    said_waiting = None
                    continue
                running = count_trials(study, TrialState.RUNNING)
            if running == 0:
                return
            if said_waiting != running:
                self.reporter.say(f"waiting for {running} trial(s) running on other workers "
                                  "(a dead worker's trial is retried here)")
                said_waiting = running
            time.sleep(min(5.0, config.heartbeat_interval_s))
            fail_stale_trials(study)

    def _continuations(self, retried: list[int]) -> str:
        """Where each retried trial's training continues from, as far as this machine
        knows (the retry says exactly, in a line, when it starts)."""
        found = [n for n in retried if self.checkpoints.path(n).exists()]
        missing = [n for n in retried if n not in found]
        parts = []
        if found:
            parts.append(f"{_trials(found, 'continues', 'continue')} from the last epoch "
                         f"saved in {self.checkpoints.folder}")
        if missing:
            parts.append(f"{_trials(missing, 'starts', 'start')} over: no checkpoint in "
                         f"{self.checkpoints.folder} (no epoch finished, or another machine)")
        return "; ".join(parts)

    def register(self, register_name: str, *, force: bool = False) -> Registration | None:
        """Register the champion if no trial of the study runs any more (this worker is the
        last), under the study lock: of two workers finishing together, one registers and
        the other finds the champion alias already on the study's best trial. ``force``
        registers a new version even then (``hpsearch register``)."""
        with self.lock.hold():
            running = count_trials(self.study, TrialState.RUNNING)
            if running and not force:
                self.reporter.say(f"not registering: {running} trial(s) still running on "
                                  "other workers; the last worker to finish registers the "
                                  "champion")
                return None
            if not force and not count_trials(self.study, TrialState.COMPLETE):
                return None
            return register_champion(study=self.study, info=get_dataset_info(self.dataset),
                                     test=self.test, tracker=self.tracker,
                                     register_name=register_name, device=self.device,
                                     force=force)

    def disk_full_error(self, exc: BaseException) -> DiskFull | None:
        """The :class:`DiskFull` that ``exc`` amounts to, naming the fullest directory this
        study writes to and its free space, or None if ``exc`` is no full disk."""
        if not is_disk_full(exc):
            return None
        try:  # a read: it works on a full disk
            location = self.tracker.client.get_experiment(
                self.tracker.experiment_id).artifact_location
        except Exception:  # the store is unreachable too: name the other places
            location = None
        return disk_full_error(exc, storage=self.lock.storage_url,
                               tracking_uri=self.tracker.tracking_uri,
                               artifact_location=location)

    def close(self) -> None:
        self.lock.close()

    @property
    def _seed(self) -> int:
        return self.config.seed if self.config else 0

    def _run_tags(self) -> dict[str, str]:
        tags = provenance_tags(self.device, self._seed)
        if self.data_origin is not None:
            tags["hpsearch.data_source"] = self.data_origin.describe()
        return tags

    def _inputs(self) -> list:
        if self.data is None:
            return []
        source = str(self.data_origin.folder) if self.data_origin is not None else None
        return dataset_inputs({"training": self.data.train, "validation": self.data.val},
                              self.dataset, source=source)

    def _run_params(self) -> dict[str, object]:
        config = self.config
        return {
            "dataset": config.spec.dataset,
            "trials": config.trials,
            "epochs": config.spec.epochs,
            "timeout_s": config.timeout_s,
            "train_subset": config.train_subset,
            "n_train": len(self.data.train),
            "n_val": len(self.data.val),
            "seed": config.seed,
            "device": device_name(self.device),
            "autocast_dtype": str(autocast_dtype(self.device)),
            "storage": redact_url(config.storage),
            "jobs": config.jobs,
            "compile": config.compile,
            "compile_mode": config.compile_mode,
            "cuda_graphs": config.cuda_graphs,
            "deterministic": config.deterministic,
            "register_name": config.register_name,
            "spec_source": config.spec.source,
            "hpsearch_version": __version__,
            "torch_version": torch.__version__,
        }


def _recorded_architectures(config: RunConfig) -> list[str] | None:
    """The architectures the study was created with, where its spec leaves out backbones
    whose weights cannot be had (a resumed study searches those again); else None."""
    if config.spec.missing_weights != "skip":
        return None
    with schema_lock(config.storage):
        return recorded_architectures(recorded_definition(config.storage, config.study_name))


def _trials(numbers: list[int], verb: str, plural_verb: str) -> str:
    """``trial 3 starts`` or ``trials 3, 5 start``."""
    if len(numbers) == 1:
        return f"trial {numbers[0]} {verb}"
    return f"trials {', '.join(map(str, numbers))} {plural_verb}"


def _return_freed_memory() -> None:
    """Hand the heap memory the last trial freed back to the OS. glibc keeps freed memory
    for reuse, so without this a study's resident memory stays at the high-water mark of
    its largest trial so far and creeps up with each new largest one."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _close_dead_runs(study: optuna.Study, tracker: StudyTracker, reporter: Reporter) -> None:
    """Close the runs ended processes left RUNNING (see
    :func:`~hpsearch.search.storage.close_runs_of_ended_processes`), saying so."""
    closed = close_runs_of_ended_processes(study, tracker.client, tracker.experiment_id)
    if closed:
        reporter.say(f"closed {closed} MLflow run(s) left RUNNING by processes that ended "
                     "(each run's tag hpsearch.reason says why)")


def _dataset_from_runs(tracker: StudyTracker) -> str:
    """The data set of a study created before studies recorded it: its parent runs'."""
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      filter_string="tags.`hpsearch.role` = 'study'",
                                      max_results=1)
    if not runs or "dataset" not in runs[0].data.params:
        raise HpsearchError(f"cannot tell the data set of study {tracker.study_name!r}: "
                            "no hpsearch run of it in the tracking store")
    return runs[0].data.params["dataset"]
