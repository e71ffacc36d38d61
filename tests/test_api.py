"""The Python API: ``hpsearch.run(...)`` runs a study as ``hpsearch run`` does and leaves the
caller's global state (MLflow's tracking URI, Optuna's verbosity, signal handlers,
matplotlib's backend) as it found it."""

from __future__ import annotations

import io
import os
import signal

import matplotlib
import mlflow
import optuna
import pytest

import hpsearch
from hpsearch.errors import HpsearchError
from hpsearch.search.progress import Reporter

from conftest import needs_fashion_mnist, tiny_mlp_spec

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def test_run_returns_the_summary_and_changes_no_global_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(tiny_mlp_spec(epochs=1))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'callers.db'}")  # sets the variable too
    environment = os.environ["MLFLOW_TRACKING_URI"]
    optuna.logging.set_verbosity(optuna.logging.INFO)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    backend = matplotlib.get_backend()
    stream = io.StringIO()
    try:
        summary = hpsearch.run(spec="spec.yaml", trials=2, train_subset=500, device="cpu",
                               study_name="api", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                               storage=f"sqlite:///{tmp_path / 'o.db'}",
                               reporter=Reporter("val_accuracy", stream=stream))
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'callers.db'}"
        assert os.environ["MLFLOW_TRACKING_URI"] == environment
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        mlflow.set_tracking_uri(None)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert matplotlib.get_backend() == backend
    assert (summary.study_name, summary.n_complete, summary.exit_code) == ("api", 2, 0)
    assert summary.metric == "val_accuracy" and 0.0 < summary.best_value <= 1.0
    assert summary.registration.name == "hpsearch-api"
    assert 0.3 < summary.registration.test_accuracy <= 1.0
    assert "trial    1  COMPLETE" in stream.getvalue()
    # The suite turns off what it does not look at (conftest): no system metrics on any
    # run, and only the served model on the parent run (no pt2 `network`).
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment_id = client.get_experiment_by_name("api").experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 3 and not [k for r in runs for k in r.data.metrics
                                   if k.startswith("system/")]
    (parent,) = [r for r in runs if r.data.tags["hpsearch.role"] == "study"]
    assert {m.name for m in client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{parent.info.run_id}'")} == {"model"}


def test_bad_arguments_raise_hpsearch_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Named as Python spells it; `hpsearch run` names the option (--trials) instead.
    with pytest.raises(HpsearchError, match=r"^trials must be >= 1, got 0$"):
        hpsearch.run(trials=0)
    with pytest.raises(HpsearchError, match="unknown dataset 'imagenet'"):
        hpsearch.run(dataset="imagenet")
    assert not list(tmp_path.iterdir())


@needs_fashion_mnist
def test_data_that_do_not_fit_on_the_device_are_streamed_and_the_run_says_so(tmp_path,
                                                                           monkeypatch):
    # 1 MB free on the device: the 500 training and 6,000 validation images (5.1 MB) are
    # streamed.
    monkeypatch.setattr("hpsearch.training.residency.device_memory",
                        lambda device: (1_000_000, 8_000_000_000))
    (tmp_path / "spec.yaml").write_text(tiny_mlp_spec(epochs=1))
    stream = io.StringIO()
    try:
        summary = hpsearch.run(spec=tmp_path / "spec.yaml", trials=1, train_subset=500,
                               device="cpu", study_name="streamed",
                               tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                               storage=f"sqlite:///{tmp_path / 'o.db'}",
                               checkpoint_dir=tmp_path / "c",
                               reporter=Reporter("val_accuracy", stream=stream))
    finally:
        mlflow.set_tracking_uri(None)
    said = stream.getvalue()
    assert ("data: 500 training / 6,000 validation images, streamed from host memory: "
            "5.1 MB does not fit in 1.0 MB free on cpu with headroom for the model") in said
    assert (summary.n_complete, summary.exit_code) == (1, 0)
    assert summary.registration is not None and summary.registration.test_accuracy > 0.1
