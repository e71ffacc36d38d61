"""End to end through the real command line on real Fashion-MNIST, checked through the
MLflow client and Optuna, then served with ``mlflow models serve`` on loopback.

The study is made deterministic: every trial is enqueued, one of them with a learning rate
so small (1e-7) that its validation accuracy stays near chance (10%), and a
ThresholdPruner(lower=0.3) prunes any trial below 30% after its first epoch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR
from hpsearch.training.device import autocast_dtype

from conftest import (
    MODEL,
    N_TRAIN,
    N_VAL,
    STUDY,
    STUDY_ARGS,
    clean_env,
    cli,
    copy_study_dir,
    free_port,
    hpsearch,
    port_closes,
    post_images,
    wait_until_ready,
)

pytestmark = pytest.mark.slow


def runs(client: MlflowClient, role: str):
    experiment = client.get_experiment_by_name(STUDY)
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`hpsearch.role` = '{role}'")


def test_defaults_put_both_stores_in_the_working_directory(study_dir):
    assert (study_dir / "hpsearch.db").exists()
    assert (study_dir / "mlflow.db").exists()


def test_study_holds_two_complete_and_one_pruned_trial(study_dir):
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'hpsearch.db'}")
    states = [t.state.name for t in study.trials]
    # The fourth enqueued trial waits for a later run with a larger --trials.
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "WAITING"]
    assert study.trials[1].intermediate_values.keys() == {1}


def test_one_parent_run_and_one_nested_run_per_trial(client):
    (parent,) = runs(client, "study")
    trials = runs(client, "trial")
    assert len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    assert sorted(r.data.tags["optuna.trial_number"] for r in trials) == ["0", "1", "2"]
    assert parent.info.status == "FINISHED"
    assert "best_value" in parent.data.metrics
    assert parent.data.tags["best_trial"] in ("0", "2")


def test_every_trial_logs_per_epoch_metrics_with_epoch_steps(client):
    for run in runs(client, "trial"):
        expected_steps = [1] if run.data.tags["optuna.state"] == "PRUNED" else [1, 2]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                    "epoch_seconds", "images_per_second"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == expected_steps, key
        assert run.data.params["arch"] in ("mlp", "cnn")


def test_pruned_trial_is_killed_not_failed_and_keeps_its_curves(client):
    (pruned,) = [r for r in runs(client, "trial") if r.data.tags["optuna.state"] == "PRUNED"]
    assert pruned.info.status == "KILLED"
    assert "epoch 1" in pruned.data.tags["hpsearch.reason"]
    files = {a.path for a in client.list_artifacts(pruned.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json", "learning_curves.png",
            "per_class_report.json", "misclassified.png"} <= files


def test_confusion_matrix_counts_match_the_logged_accuracy(client, tmp_path):
    for run in runs(client, "trial"):
        path = client.download_artifacts(run.info.run_id, "confusion_matrix.json", tmp_path)
        payload = json.loads(Path(path).read_text())
        counts = np.array(payload["counts"])
        assert counts.shape == (10, 10)
        assert counts.sum() == N_VAL
        accuracy = run.data.metrics["val_accuracy"]  # the latest epoch's value
        assert np.trace(counts) / counts.sum() == pytest.approx(accuracy, abs=1e-9)
        assert payload["class_names"][9] == "Ankle boot"


def test_champion_alias_points_at_the_best_trial(client):
    version = client.get_model_version_by_alias(MODEL, "champion")
    (parent,) = runs(client, "study")
    assert version.tags["trial"] == parent.data.tags["best_trial"]
    assert version.tags["study"] == STUDY
    test_accuracy = parent.data.metrics["test_accuracy"]
    assert 0.5 < test_accuracy <= 1.0
    assert float(version.tags["test_accuracy"]) == pytest.approx(test_accuracy, abs=1e-4)
    # The test accuracy is the served model's (float32 on the CPU); the figure under the
    # CPU's autocast, as the trials were validated, is kept beside it if the CPU has one.
    assert version.tags["test_precision"] == "float32 on the CPU, as served"
    amp = autocast_dtype(torch.device("cpu"))
    assert ("test_accuracy_autocast" in parent.data.metrics) == (amp is not None)
    if amp is not None:
        autocast_accuracy = parent.data.metrics["test_accuracy_autocast"]
        assert version.tags["test_accuracy_autocast"] == f"{autocast_accuracy:.4f}"
        assert version.tags["test_autocast_dtype"] == "bfloat16"
        # bf16 and float32 predictions differ on near ties only.
        assert autocast_accuracy == pytest.approx(test_accuracy, abs=0.01)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "test_confusion_matrix.png", "test_confusion_matrix.json",
            "test_per_class_report.json", "test_sample_predictions.png",
            "test_worst_mistakes.png"} <= files


def test_parent_run_holds_the_study_report(client, tmp_path):
    (parent,) = runs(client, "study")
    metrics = parent.data.metrics
    assert (metrics["n_complete"], metrics["n_pruned"], metrics["n_failed"]) == (2, 1, 0)
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    for name in ("trials.csv", "optimization_history.png", "intermediate_values.png",
                 "parallel_coordinate.png", "slice.png", "param_importances.png"):
        assert f"study/{name}" in files, name
    csv = Path(client.download_artifacts(parent.info.run_id, "study/trials.csv", tmp_path))
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("number,state,value,epochs,seconds,reason,lr,")
    assert [line.split(",")[1] for line in lines[1:]] == ["COMPLETE", "PRUNED", "COMPLETE",
                                                          "WAITING"]


def test_every_run_records_provenance_and_its_data_set_inputs(client):
    import torch

    for run in runs(client, "study") + runs(client, "trial"):
        tags = run.data.tags
        assert tags["torch_version"] == torch.__version__
        assert tags["hpsearch.seed"] == "0" and tags["host"] and tags["device"].startswith("cpu")
        versions = {"optuna_version", "mlflow_version", "cuda_version", "hpsearch.version"}
        assert versions <= set(tags)
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                      for i in inputs}
        assert set(by_context) == {"training", "validation"}
        assert by_context["training"].name == "fashion_mnist-training"
        assert json.loads(by_context["validation"].profile)["features_shape"] == [N_VAL, 1, 28, 28]


def test_the_header_and_every_run_say_the_data_came_from_the_installed_copy(study_dir,
                                                                          client):
    header = next(line for line in (study_dir / "first_run.txt").read_text().splitlines()
                  if " trials finished; " in line)
    assert header.endswith(f"validation images from {DEBIAN_FASHION_MNIST_DIR}"), header
    for run in runs(client, "study") + runs(client, "trial"):
        assert run.data.tags["hpsearch.data_source"] == str(DEBIAN_FASHION_MNIST_DIR)
        for each in client.get_run(run.info.run_id).inputs.dataset_inputs:
            assert json.loads(each.dataset.source) == {"uri": str(DEBIAN_FASHION_MNIST_DIR)}


def test_per_class_report_agrees_with_the_confusion_matrix(client, tmp_path):
    for run in runs(client, "trial"):
        path = client.download_artifacts(run.info.run_id, "per_class_report.json", tmp_path)
        report = json.loads(Path(path).read_text())
        supports = [c["support"] for c in report["classes"].values()]
        assert sum(supports) == N_VAL
        recalled = sum(c["recall"] * c["support"] for c in report["classes"].values())
        assert recalled / N_VAL == pytest.approx(run.data.metrics["val_accuracy"], abs=1e-9)
        assert report["accuracy"] == pytest.approx(run.data.metrics["val_accuracy"], abs=1e-9)
        assert run.data.metrics["val_f1/ankle_boot"] == report["classes"]["Ankle boot"]["f1"]
        # Only complete trials get the sortable objective, so pruned ones sort last.
        complete = run.data.tags["optuna.state"] == "COMPLETE"
        assert ("objective" in run.data.metrics) == complete


def test_studies_and_show_commands_list_the_study_and_its_leaderboard(study_dir, client):
    listed = cli(study_dir, "studies")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split() for line in listed.stdout.splitlines()
              if line.split()[:1] == [STUDY]]
    assert row[1:5] == ["4", "2", "1", "0"]  # trials, complete, pruned, failed
    shown = cli(study_dir, "show", STUDY)
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[1].split()
    (parent,) = runs(client, "study")
    assert first[:2] == [parent.data.tags["best_trial"], "COMPLETE"]
    missing = cli(study_dir, "show", "nope")
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr


def test_ui_command_prints_its_url_and_starts_the_mlflow_ui_on_loopback(study_dir):
    port = free_port()
    exe = Path(sys.executable).with_name("hpsearch")
    server = subprocess.Popen([str(exe), "ui", "--port", str(port)], cwd=study_dir,
                              env=clean_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        # The URL that opens MLflow's model-training view (not its GenAI pages).
        first = server.stderr.readline()
        assert (f"open http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning"
                in first)
        wait_until_ready(port, server, path="/health")
        experiments = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
        with urllib.request.urlopen(f"{experiments}?experiment_name={STUDY}") as response:
            experiment = json.loads(response.read())["experiment"]
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
    finally:
        server.terminate()
        server.wait(timeout=30)
    # SIGTERM reached MLflow's server itself (hpsearch execs it): nothing left listening.
    assert port_closes(port)


def test_same_command_again_resumes_without_new_trials_then_adds_missing_ones(study_dir,
                                                                             tmp_path):
    work = copy_study_dir(study_dir, tmp_path / "study")  # the other tests read the original
    again = hpsearch(work, *STUDY_ARGS, "--trials", "3")
    assert again.returncode == 0, again.stderr
    assert "3 of 3 trials finished; 0 to run" in again.stderr
    assert "already registered" in again.stdout
    more = hpsearch(work, *STUDY_ARGS, "--trials", "4")
    assert more.returncode == 0, more.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'hpsearch.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["trial"] == str(study.best_trial.number)


def test_served_champion_answers_with_the_logged_test_accuracy(served, client):
    from hpsearch.data_utils import load_dataset

    _, test = load_dataset("fashion_mnist")
    predictions = []
    for start in (0, 1000):  # two requests: the server takes at most 1024 images at once
        status, body = post_images(served.url, (test.images[start:start + 1000] / 255).tolist(),
                                   output="class_index")
        assert status == 200, body
        predictions += body["predictions"]
    assert len(predictions) == 2000
    served_accuracy = float(np.mean(np.array(predictions) == test.labels[:2000]))
    (parent,) = [r for r in runs(client, "study") if "test_accuracy" in r.data.metrics]
    # 2,000 of the 10,000 test images: a sampling error of about 1 point.
    assert served_accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=0.04)


def test_missing_data_is_one_clear_error_with_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(tmp_path, "run", "--dataset", "mnist", "--data-dir", str(empty),
                 "--trials", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "mnist" in result.stderr and str(empty) in result.stderr
    assert not (tmp_path / "hpsearch.db").exists()  # nothing half-written


def test_unknown_dataset_and_bad_spec_are_rejected_with_exit_code_2(tmp_path):
    unknown = cli(tmp_path, "run", "--dataset", "imagenet", "--trials", "1")
    assert unknown.returncode == 2
    assert "imagenet" in unknown.stderr and "fashion_mnist" in unknown.stderr
    (tmp_path / "bad.yaml").write_text("dataset: fashion_mnist\nepoch: 3\n")
    bad = cli(tmp_path, "run", "--spec", "bad.yaml")
    assert bad.returncode == 2
    assert "bad.yaml: epoch: unknown key" in bad.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr


def _first_parent(client):
    """The parent run of the fixture's first `hpsearch run` (later tests resume the study)."""
    return min(runs(client, "study"), key=lambda r: r.info.start_time)


def test_parent_run_shows_the_data_class_counts_and_samples(client, tmp_path):
    parent = _first_parent(client)
    path = client.download_artifacts(parent.info.run_id, "data/class_distribution.json",
                                     str(tmp_path))
    counts = json.loads(Path(path).read_text())["images_per_class"]
    assert [sum(counts[s]) for s in ("training", "validation", "test")] == [N_TRAIN, N_VAL,
                                                                           10_000]
    assert counts["test"] == [1000] * 10  # Fashion-MNIST's test set is balanced
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "data")}
    assert {"data/class_distribution.png", "data/samples_per_class.png"} <= files


def test_anytime_best_value_is_logged_after_every_finished_trial(client):
    parent = _first_parent(client)
    history = client.get_metric_history(parent.info.run_id, "best_value")
    assert sorted(m.step for m in history) == [1, 2, 3]  # 3 finished trials, one point each
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert values == sorted(values)  # the best so far never gets worse
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert "study/anytime.png" in files


def test_every_trial_logs_what_it_cost(client, study_dir):
    for run in runs(client, "trial"):
        metrics = run.data.metrics
        assert metrics["parameters"] > 1000 and metrics["macs_per_image"] > 1000
        assert 0 < metrics["train_seconds"] < metrics["trial_seconds"]
        assert metrics["mean_images_per_second"] > 100
    shown = cli(study_dir, "show", STUDY, "--format", "json")
    rows = json.loads(shown.stdout)
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert all(r["params"] > 1000 and r["macs"] > 1000 and r["train_s"] > 0
               and r["img_per_s"] > 100 for r in finished)


def test_system_metrics_on_the_parent_run_and_trials(client):
    parent = _first_parent(client)
    assert {"system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes"} <= set(parent.data.metrics)
    assert any("system/cpu_utilization_percentage" in r.data.metrics
               for r in runs(client, "trial"))


def logged_model_names(client, run) -> set[str]:
    """The names of the models logged on ``run`` (MLflow 3's LoggedModel)."""
    return {m.name for m in client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'")}


def test_the_champion_is_also_logged_as_a_pt2_network(client):
    # study_dir runs with $HPSEARCH_EXPORT_NETWORK on, as a user does (the suite's
    # default is off; tests/test_api.py asserts that off leaves it out).
    parent = _first_parent(client)
    assert logged_model_names(client, parent) == {"model", "network"}
    (network,) = client.search_logged_models(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"source_run_id = '{parent.info.run_id}' AND name = 'network'")
    folder = Path(network.artifact_location.removeprefix("file://"))  # ./mlruns: local
    assert (folder / "data" / "model.pt2").is_file()  # torch.export's program
    assert "pytorch" in (folder / "MLmodel").read_text()


def test_a_normal_run_prints_no_library_warning(study_dir):
    output = (study_dir / "first_run.txt").read_text()
    assert "Warning" not in output and "\x1b[" not in output
    assert "Successfully registered model" not in output


def test_studies_and_show_answer_in_json(study_dir):
    listed = json.loads(cli(study_dir, "studies", "--format", "json").stdout)
    (row,) = [r for r in listed if r["study"] == STUDY]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'hpsearch.db'}")
    states = [t.state.name for t in study.trials]
    assert (row["complete"], row["pruned"], row["failed"], row["interrupted"]) == (
        states.count("COMPLETE"), states.count("PRUNED"), 0, 0)
    assert row["best_value"] == pytest.approx(study.best_value, abs=1e-4)
    board = json.loads(cli(study_dir, "show", STUDY, "--format", "json").stdout)
    assert board[0]["state"] == "COMPLETE" and board[0]["value"] >= board[1]["value"]


def test_the_command_list_is_whole_and_every_option_has_help():
    help_text = cli(Path.cwd(), "--help").stdout
    commands = help_text.split("Commands:")[1].strip().splitlines()
    assert len(commands) == 9 and not any(line.rstrip().endswith("...") for line in commands)
    for command in ("run", "serve", "ui", "predict", "studies", "show", "register",
                    "data inspect", "data cache"):
        text = cli(Path.cwd(), *command.split(), "--help").stdout
        options = [line for line in text.split("Options:")[1].splitlines()
                   if line.strip().startswith("--") and "--help" not in line]
        assert all(len(line.split("  ")) > 1 and line.split("  ")[-1].strip()
                   for line in options), (command, options)
