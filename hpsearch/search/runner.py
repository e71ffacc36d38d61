"""The sessions a study is worked in (:mod:`~hpsearch.search.sessions` holds what they
share), each opened in the same order: the device, the stores' fast checks
(:func:`~hpsearch.search.preflight.preflight`, a second), the data, then the Optuna study
and the MLflow tracker, so that bad input is refused before anything is written.

- :class:`RunSession`: ``hpsearch run`` and each ``--jobs`` worker. Its trials train on
  :class:`~hpsearch.search.session.TrialData`, loaded once per process and copied to the
  device once, shared by every trial. The ``--jobs`` coordinator opens one without training
  data (``train=False``): it never trains; its workers load their own.
- :class:`RegisterSession`: ``hpsearch register``: the study and its test split only (for
  own images the test rows of the cache, found from ``stat`` alone).
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch import __version__
from hpsearch.errors import check_interrupted, is_disk_full, signals_deferred
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
from hpsearch.search.data import (
    DataRecord,
    EvaluationData,
    StudyData,
    check_splits,
    image_options,
    load_data,
    load_study_data,
    load_test_data,
    summary_line,
)
from hpsearch.search.gpu_sharing import default_jobs
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.preflight import preflight
from hpsearch.search.pretrained import fetch_weights, fit_to_data, recorded_architectures
from hpsearch.search.progress import RemainingTime, Reporter, StudyEstimate
from hpsearch.search.sessions import RegisterSession, StudySession, close_dead_runs
from hpsearch.search.storage import (
    fail_stale_trials,
    open_study,
    recorded_definition,
    retry_interrupted,
)
from hpsearch.studies.components import build_sampler
from hpsearch.tracking.provenance import dataset_inputs, resolve_tracking_uri
from hpsearch.tracking.report import log_data_report, log_image_report
from hpsearch.tracking.runs import StudyTracker
from hpsearch.training.device import autocast_dtype, device_name, resolve_device
from hpsearch.training.residency import Residency, plan_residency

__all__ = ["RegisterSession", "RunSession", "StudySession", "default_jobs", "load_data"]


@dataclass(kw_only=True)
class RunSession(StudySession):
    """``hpsearch run`` (or one ``--jobs`` worker): the study, its stores, and the data its
    trials train on.

    Attributes:
        config: the run's settings.
        checkpoints: where trials save their state after every epoch.
        trials: the splits trials train and validate on; None in the ``--jobs``
            coordinator, which trains nothing (its workers load their own).
        residency: where ``trials`` lives while training, and why (None with ``trials``).
    """

    config: RunConfig
    checkpoints: CheckpointStore
    trials: TrialData | None = None
    residency: Residency | None = None

    @classmethod
    def open(cls, config: RunConfig, reporter: Reporter, *, train: bool = True) -> RunSession:
        """Open (create or resume) the study ``config`` names, its data and stores, with
        the pretrained weights its trials need in torchvision's cache. The session's
        ``config`` holds the spec as this study searches it
        (:mod:`~hpsearch.search.pretrained`: backbones left out, image sizes that fit).

        Args:
            config: the run's settings.
            reporter: progress display (a folder's first decoding reports there).
            train: load the training and validation splits (False: the ``--jobs``
                coordinator, which loads only the test split, and for own images builds
                the cache once, before its workers start).

        Raises:
            HpsearchError: bad device, missing or corrupt data, a folder or manifest of
                images that cannot be used at all, unusable storage or tracking store, an
                unwritable directory, a resumed study whose settings or images changed, or
                pretrained weights that are neither cached nor downloadable
                (``WeightsUnavailable``); raised before anything is written.
        """
        device = resolve_device(config.device, deterministic=config.deterministic)
        tracking_uri = resolve_tracking_uri(config.tracking_uri)
        preflight(config.storage, tracking_uri)  # in a second: before reading the data set
        # Before the data set and before any trial or --jobs worker: the weights every
        # trial reads from the cache (see hpsearch.search.pretrained).
        spec = fetch_weights(config.spec, reporter, recorded=_recorded_architectures(config))
        config = dataclasses.replace(config, spec=spec)
        checkpoints = CheckpointStore(
            config.checkpoint_dir or default_checkpoint_root(config.storage), config.study_name)
        checkpoints.check_writable()
        data = load_study_data(config, reporter) if train else None
        tested = data.tested if data is not None else load_test_data(config, reporter)
        check_splits(tested, data)
        spec = fit_to_data(config.spec, tested.info.shape.size, reporter)
        config = dataclasses.replace(config, spec=spec)
        record = _data_record(config, tested)
        with schema_lock(config.storage, tracking_uri):
            study = open_study(config, tracking_uri, data_record=record)
            tracker = StudyTracker(tracking_uri=tracking_uri, study_name=config.study_name)
        close_dead_runs(study, tracker, reporter)
        session = cls(study=study, tracker=tracker, device=device,
                      lock=StudyLock(config.storage, config.study_name), reporter=reporter,
                      tested=tested, config=config, checkpoints=checkpoints)
        if data is not None:
            session._keep(data)
        return session

    def _keep(self, data: StudyData) -> None:
        """Keep the splits trials train on, resident on the device where they fit."""
        nbytes = data.train.images.nbytes + data.val.images.nbytes
        self.residency = plan_residency(nbytes, self.device, jobs=self.config.jobs or 1)
        self.trials = TrialData(info=data.info, train=data.train, val=data.val,
                                resident=self.residency.resident)
        self.reporter.say(f"data: {len(data.train):,} training / {len(data.val):,} "
                          f"validation images, {self.residency.reason}")

    def describe_data(self) -> str:
        """The data in a few words, for the run's header."""
        if self.trials is None:
            return f"data from {self.tested.source}, loaded by each worker"
        return (f"{len(self.trials.train)} training / {len(self.trials.val)} validation "
                f"images from {self.tested.source}")

    def start_parent(self) -> None:
        """Open this ``hpsearch run``'s parent run (role ``study``) with its settings, the
        resolved spec, and (where this process loaded the training data) the data report
        and the dataset inputs; for own images, say the data's summary line."""
        config = self.config
        self.tracker.start_parent(params=self._run_params(), spec_yaml=config.spec.to_yaml(),
                                  role="study", run_tags=self._run_tags(config.seed),
                                  inputs=self._inputs())
        if self.tested.images is not None:
            self.reporter.say(summary_line(self.tested))
        if self.trials is not None:
            self._log_data()

    def attach_parent(self, parent_run_id: str, *, log_data: bool = False) -> None:
        """Nest this worker's trial runs under the coordinator's parent run (``--jobs``);
        ``log_data``: also log the data report, the dataset inputs and the split sizes on
        it (the first worker: the coordinator loads no training data)."""
        self.tracker.attach_parent(parent_run_id, run_tags=self._run_tags(self.config.seed),
                                   inputs=self._inputs())
        if log_data:
            client = self.tracker.client
            if self.tracker.inputs:
                client.log_inputs(parent_run_id, datasets=self.tracker.inputs)
            client.log_batch(parent_run_id, params=_params(self._data_params()))
            self._log_data()

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
        if self.trials is None:
            raise RuntimeError("a session opened with train=False trains no trial")
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
        objective = Objective(spec=config.spec, data=self.trials, device=self.device,
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
        callbacks = [_writing_whole(callback) for callback in callbacks]

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

    def _log_data(self) -> None:
        """The data report on the parent run: images per class and split, samples per
        class; for own images also the originals' sizes and modes, the skipped files, the
        leakage and each split's files."""
        client, run_id = self.tracker.client, self.tracker.parent_run_id
        log_data_report(client, run_id, {"training": self.trials.train,
                                         "validation": self.trials.val,
                                         "test": self.tested.test},
                        self.trials.info.class_names)
        images = self.tested.images
        if images is not None:
            from hpsearch.data_utils.own_images import inspect_images

            report = inspect_images(images.source, image_options(self.config.spec,
                                                                 self.config.seed),
                                    cache_dir=self.config.cache_dir, progress=None)
            log_image_report(client, run_id, images, report)

    def _inputs(self) -> list:
        """MLflow dataset inputs of the training and validation splits (none without
        them): own images' source is the folder or manifest and their digest the
        manifest's."""
        if self.trials is None:
            return []
        images = self.tested.images
        return dataset_inputs(
            {"training": self.trials.train, "validation": self.trials.val},
            self.trials.info.name,
            source=str(self.tested.folder) if self.tested.folder is not None else None,
            digest=images.manifest_digest if images is not None else None)

    def _data_params(self) -> dict[str, object]:
        params: dict[str, object] = {"n_train": len(self.trials.train),
                                     "n_val": len(self.trials.val)}
        if self.tested.images is not None:
            params |= {"n_test": len(self.tested.test),
                       "image_size": self.trials.info.shape.size,
                       "channels": self.trials.info.shape.channels}
        return params

    def _run_params(self) -> dict[str, object]:
        config = self.config
        data = self._data_params() if self.trials is not None else {}
        return {
            "dataset": config.spec.dataset,
            "trials": config.trials,
            "epochs": config.spec.epochs,
            "timeout_s": config.timeout_s,
            "train_subset": config.train_subset,
            **data,
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


def _data_record(config: RunConfig, tested: EvaluationData) -> DataRecord | None:
    """The record a new study keeps of its own images (None for a registered data set)."""
    if tested.images is None:
        return None
    return DataRecord.of(tested.images, image_options(config.spec, config.seed), tested.info)


def _params(values: dict[str, object]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in values.items()]
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


def _writing_whole(callback: Callable[[optuna.Study, FrozenTrial], None]
                   ) -> Callable[[optuna.Study, FrozenTrial], None]:
    """``callback`` with SIGINT/SIGTERM held while it runs (it writes to the stores: the
    study report, the best value, deleted checkpoints), acted on when it returns."""

    def whole(study: optuna.Study, trial: FrozenTrial) -> None:
        with signals_deferred():
            callback(study, trial)

    return whole
