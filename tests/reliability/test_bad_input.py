"""Bad input gets one clear line and exit code 2, before any training starts and with
nothing half-written in the working directory.

The cases run the command line in this process (conftest.cli); one case and the
unreachable tracking server run as a real process too, as a user's shell sees them."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import cli, free_port, hpsearch
from observations import record

pytestmark = pytest.mark.slow

BAD_ARCH_SPEC = """
dataset: fashion_mnist
search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: [64]
  depth: 1
  dropout: 0.0
  arch: [cnn, transformer]
"""

CASES = {
    "unknown data set": (["--dataset", "imagenet"], None, "imagenet"),
    "unknown architecture": (["--spec", "spec.yaml"], BAD_ARCH_SPEC,
                             "'transformer' is not one of"),
    "malformed spec": (["--spec", "spec.yaml"], "dataset: [fashion_mnist\n", "not valid YAML"),
    "invalid spec value": (["--spec", "spec.yaml"], "dataset: fashion_mnist\nepochs: 0\n",
                           "epochs: must be >= 1"),
    "--trials 0": (["--trials", "0"], None, "--trials must be >= 1"),
    "--jobs 0": (["--jobs", "0"], None, "--jobs must be >= 1"),
    "unknown device": (["--device", "tpu"], None, "Invalid value for '--device'"),
    "data dir that does not exist": (["--data-dir", "/nonexistent/data"], None,
                                     "does not exist"),
    "storage URL that cannot be opened": (
        ["--storage", "postgresql://nobody@127.0.0.1:1/none"], None, "cannot open Optuna storage"),
    "storage directory that does not exist": (
        ["--storage", "sqlite:////nonexistent/dir/optuna.db"], None, "does not exist"),
}


def bad_input_is_one_line_with_exit_code_2(result, tmp_path, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert sum(line.startswith(("hpsearch: error:", "Error:")) for line in lines) == 1
    written = {p.name for p in tmp_path.iterdir()} - {"spec.yaml"}
    assert written == set(), f"half-written: {written}"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_with_exit_code_2_and_writes_nothing(tmp_path, case):
    args, spec, message = CASES[case]
    if spec is not None:
        (tmp_path / "spec.yaml").write_text(spec)
    result = cli(tmp_path, "run", "--trials", "1", *args)
    bad_input_is_one_line_with_exit_code_2(result, tmp_path, message)
    record(f"bad input: {case}", f"exit code 2, one line: {message!r}",
           "nothing written in the working directory")


def test_bad_input_in_a_real_process_is_one_line_with_exit_code_2(tmp_path):
    """One case as the shell sees it: the process's exit code, and nothing else on stderr
    (no library's warning or log line)."""
    result = hpsearch(tmp_path, "run", "--trials", "1", "--dataset", "imagenet", timeout=120)
    bad_input_is_one_line_with_exit_code_2(result, tmp_path, "imagenet")
    assert result.stderr.startswith("hpsearch: error: ") and result.stderr.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_rejected(tmp_path):
    result = cli(tmp_path, "run", "--device", "cuda")
    assert result.returncode == 2
    assert "no CUDA device is available" in result.stderr
    assert not any(tmp_path.iterdir())
    record("bad input: --device cuda without CUDA", "exit code 2, one line",
           "nothing written in the working directory")


def test_unreachable_tracking_server_fails_within_seconds(tmp_path):
    start = time.monotonic()
    result = hpsearch(tmp_path, "run", "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                      timeout=120)
    seconds = time.monotonic() - start
    assert result.returncode == 2
    assert "cannot reach the MLflow tracking server" in result.stderr
    assert not any(tmp_path.iterdir())
    # Start-up (imports, reading the data set) takes most of it; the check itself ~0 s.
    assert seconds < 30
    record("bad input: unreachable tracking server",
           f"exit code 2 after {seconds:.1f} s in all (process start included)",
           "nothing written in the working directory")


def test_unwritable_working_directory_is_rejected_before_training():
    # /proc refuses new files even for root, where permission bits would not.
    result = cli("/proc", "run", "--trials", "1")
    assert result.returncode == 2
    assert "cannot write in /proc" in result.stderr
    assert "Traceback" not in result.stderr
    record("bad input: working directory that cannot be written (/proc)",
           "exit code 2, one line naming the directory", "nothing written")
