"""One place each: the first line of an error (hpsearch.errors), the defaults and the
environment's switches (hpsearch.defaults), and bad arguments named as the caller spells
them: ``trials`` from Python, ``--trials`` from the command line."""

from __future__ import annotations

import inspect

import pytest

from hpsearch import defaults
from hpsearch.api import make_config, run
from hpsearch.cli import main
from hpsearch.cli.common import option_name
from hpsearch.errors import ArgumentError, HpsearchError, error_line, first_line

from conftest import cli


def test_first_line_keeps_what_comes_before_the_first_line_break() -> None:
    sql_error = RuntimeError("(sqlite3.OperationalError) disk I/O error\n[SQL: INSERT ...]")
    assert first_line(sql_error) == "(sqlite3.OperationalError) disk I/O error"
    assert first_line("\n  padded\nsecond") == "padded"
    assert first_line(ValueError()) == ""
    assert first_line("x" * 50, limit=10) == "xxxxxxx..."
    assert first_line("x" * 10, limit=10) == "x" * 10


def test_error_line_names_the_type_and_the_first_line() -> None:
    assert error_line(OSError("disk full\ndetails")) == "OSError: disk full"
    assert error_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert error_line(ValueError("y" * 300), limit=40) == "ValueError: " + "y" * 25 + "..."


def _config(**options):
    arguments = dict(dataset=None, spec=None, trials=1, epochs=None, timeout_s=None,
                     train_subset=None, study_name=None, storage=None, tracking_uri=None,
                     data_dir=None, device="cpu", seed=0, register_name=None, max_failures=5,
                     heartbeat_interval_s=10, jobs=None, compile=False)
    return make_config(**(arguments | options))


# (Python arguments, the API's message, the command line's options, the command line's line)
BAD_ARGUMENTS = {
    "trials": ({"trials": 0}, "trials must be >= 1, got 0",
               ["--trials", "0"], "--trials must be >= 1, got 0"),
    "train_subset": ({"train_subset": -5}, "train_subset must be >= 1, got -5",
                     ["--train-subset", "-5"], "--train-subset must be >= 1, got -5"),
    "timeout_s": ({"timeout_s": -1.5}, "timeout_s must be > 0 seconds, got -1.5",
                  ["--timeout", "-1.5"], "--timeout must be > 0 seconds, got -1.5"),
    "heartbeat_interval_s": ({"heartbeat_interval_s": 0},
                             "heartbeat_interval_s must be >= 1, got 0",
                             ["--heartbeat-interval", "0"],
                             "--heartbeat-interval must be >= 1, got 0"),
    "max_failures": ({"max_failures": 0}, "max_failures must be >= 1, got 0",
                     ["--max-failures", "0"], "--max-failures must be >= 1, got 0"),
    "jobs": ({"jobs": 0}, "jobs must be >= 1, got 0", ["--jobs", "0"],
             "--jobs must be >= 1, got 0"),
    "epochs": ({"epochs": 0}, "epochs must be >= 1, got 0", ["--epochs", "0"],
               "--epochs must be >= 1, got 0"),
    "compile_mode without compile": (
        {"compile_mode": "max-autotune"}, "compile_mode max-autotune needs compile",
        ["--compile-mode", "max-autotune"], "--compile-mode max-autotune needs --compile"),
    "dataset": ({"dataset": "imagenet"}, "dataset: unknown dataset 'imagenet'",
                ["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_python_names_the_argument_and_the_command_line_its_option(tmp_path, case) -> None:
    arguments, api_message, options, cli_message = BAD_ARGUMENTS[case]
    with pytest.raises(ArgumentError) as raised:
        _config(**arguments)
    assert str(raised.value).startswith(api_message)
    assert "--" not in str(raised.value)

    result = cli(tmp_path, "run", "--device", "cpu", *options)
    assert result.returncode == 2
    assert result.stderr.startswith(f"hpsearch: error: {cli_message}")
    assert result.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_device_is_named_device_in_python(monkeypatch) -> None:
    from hpsearch.training import device as device_module

    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ArgumentError, match=r"^device cuda: no CUDA device is available .*; "
                                            r"use device cpu or auto$"):
        device_module.resolve_device("cuda")
    with pytest.raises(ArgumentError, match=r"^device 'tpu': choose auto, cpu, cuda$"):
        device_module.resolve_device("tpu")


def test_every_argument_of_the_python_api_is_an_option_of_hpsearch_run() -> None:
    options = {opt for param in main.commands["run"].params for opt in param.opts}
    arguments = set(inspect.signature(run).parameters) - {"reporter"}
    assert {name: option_name(name) for name in arguments
            if option_name(name) not in options} == {}


def test_an_argument_error_is_a_hpsearch_error_with_its_message_spelled_either_way() -> None:
    error = ArgumentError("{checkpoint_dir} {root}: pass a writable {checkpoint_dir}",
                          root="/x/{y}")
    assert isinstance(error, HpsearchError)
    assert error.arguments == ("checkpoint_dir",)
    assert str(error) == "checkpoint_dir /x/{y}: pass a writable checkpoint_dir"
    assert error.spelled(option_name) == ("--checkpoint-dir /x/{y}: pass a writable "
                                          "--checkpoint-dir")


# ---------------------------------------------------------------------------------------------
# Defaults and switches
# ---------------------------------------------------------------------------------------------


def test_the_storage_is_the_argument_else_the_environment_else_the_default(monkeypatch):
    monkeypatch.delenv(defaults.STORAGE_ENV, raising=False)
    assert defaults.storage_url(None) == defaults.DEFAULT_STORAGE == "sqlite:///hpsearch.db"
    monkeypatch.setenv(defaults.STORAGE_ENV, "sqlite:///env.db")
    assert defaults.storage_url(None) == "sqlite:///env.db"
    assert defaults.storage_url("sqlite:///given.db") == "sqlite:///given.db"
    assert _config().storage == "sqlite:///env.db"


def test_the_command_line_shows_the_defaults_it_shares_with_the_api() -> None:
    params = {p.name: p for p in main.commands["run"].params}
    assert params["storage"].default == defaults.DEFAULT_STORAGE
    assert params["storage"].envvar == defaults.STORAGE_ENV
    assert params["data_dir"].envvar == defaults.DATA_DIR_ENV
    assert tuple(params["device"].type.choices) == defaults.DEVICES
    register = {p.name: p for p in main.commands["register"].params}
    assert tuple(register["device"].type.choices) == defaults.DEVICES


@pytest.mark.parametrize("value, on", [(None, True), ("", True), ("1", True), ("on", True),
                                       ("TRUE", True), ("0", False), ("off", False),
                                       ("no", False), (" False ", False)])
def test_a_switch_is_on_unless_it_says_off(monkeypatch, value, on) -> None:
    for name in (defaults.SYSTEM_METRICS_ENV, defaults.EXPORT_NETWORK_ENV,
                 defaults.FIGURES_ENV):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert defaults.system_metrics() is on and defaults.export_network() is on
    assert defaults.figures() is on


def test_a_switch_that_is_neither_on_nor_off_stops_the_run_before_it_starts(tmp_path):
    from conftest import clean_env

    result = cli(tmp_path, "run", "--device", "cpu",
                 env=clean_env(HPSEARCH_SYSTEM_METRICS="of"))
    assert result.returncode == 2
    assert result.stderr == ("hpsearch: error: $HPSEARCH_SYSTEM_METRICS='of': use 1 (on, the "
                             "default) or 0 (off)\n")
    assert not list(tmp_path.iterdir())


def test_the_tracker_samples_system_metrics_as_the_switch_says(tmp_path, monkeypatch) -> None:
    from hpsearch.tracking.runs import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(defaults.SYSTEM_METRICS_ENV, "0")
    assert StudyTracker(tracking_uri=uri, study_name="s").system_metrics is False
    monkeypatch.setenv(defaults.SYSTEM_METRICS_ENV, "1")
    assert StudyTracker(tracking_uri=uri, study_name="s").system_metrics is True
    assert StudyTracker(tracking_uri=uri, study_name="s", system_metrics=False
                        ).system_metrics is False


def test_with_figures_off_a_trial_logs_the_numbers_and_no_png(monkeypatch) -> None:
    """``$HPSEARCH_FIGURES=0`` leaves out every PNG a trial's run logs and keeps the numbers
    behind them; on (the default) both are logged."""
    import numpy as np

    from hpsearch.tracking import runs

    class Client:
        def __init__(self) -> None:
            self.logged: list[str] = []

        def log_dict(self, run_id, payload, name) -> None:
            self.logged.append(name)

        def log_figure(self, run_id, figure, name) -> None:
            self.logged.append(name)

    class Result:
        confusion = np.eye(2, dtype=np.int64)
        accuracy = 1.0

    drawn: list[str] = []
    draw = runs.confusion_matrix_figure
    monkeypatch.setattr(runs, "confusion_matrix_figure",
                        lambda *args, **kwargs: (drawn.append("figure"), draw(*args, **kwargs))[1])
    for value, expected, figures in (("0", ["confusion_matrix.json"], []),
                                     ("1", ["confusion_matrix.json", "confusion_matrix.png"],
                                      ["figure"])):
        monkeypatch.setenv(defaults.FIGURES_ENV, value)
        client = Client()
        drawn.clear()
        runs.log_confusion(client, "run", Result(), ["a", "b"], split="validation",
                           name="confusion_matrix", title="t", epoch=1)
        assert client.logged == expected
        assert drawn == figures  # off: not even drawn
