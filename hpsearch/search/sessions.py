"""What every session of a study holds (:class:`StudySession`: the Optuna study, the MLflow
tracker, the study lock, the device, and the data its champion is tested on), and
:class:`RegisterSession`, ``hpsearch register``'s: the study and its test split only (for
own images the test rows of the cache the study was created on, nothing decoded).
:class:`~hpsearch.search.runner.RunSession` is ``hpsearch run``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.errors import DiskFull, HpsearchError, is_disk_full
from hpsearch.redact import redact_url
from hpsearch.search.coordination import StudyLock, count_trials
from hpsearch.search.data import DATA_ATTR, EvaluationData, load_recorded_test_data
from hpsearch.search.diskspace import disk_full_error
from hpsearch.search.preflight import preflight
from hpsearch.search.progress import Reporter
from hpsearch.search.storage import close_runs_of_ended_processes, load_existing_study
from hpsearch.serving.registration import Registration, register_champion
from hpsearch.tracking.provenance import provenance_tags, resolve_tracking_uri
from hpsearch.tracking.runs import StudyTracker
from hpsearch.training.device import resolve_device

__all__ = ["RegisterSession", "StudySession", "close_dead_runs"]


@dataclass
class StudySession:
    """A study opened for work: its Optuna study, MLflow tracker, study lock and device,
    and the data its champion is tested on. Open a :class:`RunSession` or a
    :class:`RegisterSession`.
    """

    study: optuna.Study
    tracker: StudyTracker
    device: torch.device
    lock: StudyLock
    reporter: Reporter
    tested: EvaluationData

    @property
    def dataset(self) -> str:
        """The study's data set: a registered name, or the path of its own images."""
        return self.study.user_attrs.get("hpsearch.dataset") or self.tested.info.name

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
            return register_champion(study=self.study, info=self.tested.info,
                                     test=self.tested.test, tracker=self.tracker,
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

    def _run_tags(self, seed: int) -> dict[str, str]:
        tags = provenance_tags(self.device, seed)
        tags["hpsearch.data_source"] = self.tested.source
        return tags


@dataclass
class RegisterSession(StudySession):
    """``hpsearch register``: an existing study and its test split, nothing to train on."""

    @classmethod
    def open(cls, *, study_name: str, storage: str, tracking_uri: str | None,
             data_dir: str | None, device: str, reporter: Reporter,
             cache_dir: str | None = None) -> RegisterSession:
        """Open a study that must exist, with the test split its champion is tested on:
        a registered data set's test files (the training files are not read), or the test
        rows of the cache its own images were decoded into (nothing decoded).

        Raises:
            HpsearchError: no such study, its data set cannot be found (or its own images
                changed since), or the stores cannot be reached.
        """
        torch_device = resolve_device(device)
        tracking_uri = resolve_tracking_uri(tracking_uri)
        preflight(storage, tracking_uri)
        study = load_existing_study(study_name, storage)
        tracker = StudyTracker(tracking_uri=tracking_uri, study_name=study_name)
        close_dead_runs(study, tracker, reporter)
        dataset = study.user_attrs.get("hpsearch.dataset") or _dataset_from_runs(tracker)
        tested = load_recorded_test_data(dataset, study.user_attrs.get(DATA_ATTR),
                                         data_dir=data_dir, cache_dir=cache_dir,
                                         reporter=reporter)
        return cls(study=study, tracker=tracker, device=torch_device,
                   lock=StudyLock(storage, study_name), reporter=reporter, tested=tested)

    def start_parent(self, register_name: str) -> None:
        """Open this invocation's parent run (role ``register``)."""
        params = {"study": self.study.study_name, "dataset": self.dataset,
                  "storage": redact_url(self.lock.storage_url), "register_name": register_name}
        self.tracker.start_parent(params=params, spec_yaml=None, role="register",
                                  run_tags=self._run_tags(0), inputs=[])


def close_dead_runs(study: optuna.Study, tracker: StudyTracker, reporter: Reporter) -> None:
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
