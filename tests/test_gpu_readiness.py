"""CUDA decisions that a CPU can check: bf16 only where the GPU has it, NVIDIA MPS detection
and the ``--jobs`` sharing of a machine, ``--deterministic``, and the new ``hpsearch run``
options (``--compile-mode``, ``--cuda-graphs``, ``--deterministic``)."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from hpsearch.api import make_config
from hpsearch.cli import main
from hpsearch.errors import HpsearchError
from hpsearch.search import gpu_sharing
from hpsearch.training import device as device_module
from hpsearch.training.device import autocast_dtype, resolve_device

CUDA = torch.device("cuda")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_bf16_autocast_only_on_gpus_that_compute_bf16_natively(monkeypatch, native,
                                                                expected) -> None:
    asked = {}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked["including_emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert autocast_dtype(CUDA) is expected
    assert asked == {"including_emulation": False}  # emulated bf16 is slower than fp32


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), None), ((8, 0), torch.bfloat16),
                                                      ((9, 0), torch.bfloat16)])
def test_an_older_torch_decides_bf16_by_compute_capability(monkeypatch, capability,
                                                           expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # no keyword
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(CUDA) is expected


def test_mps_is_detected_by_its_control_pipe(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not gpu_sharing.mps_active()
    (tmp_path / "control").write_text("")  # a plain file is no daemon's pipe
    assert not gpu_sharing.mps_active()
    (tmp_path / "control").unlink()
    os.mkfifo(tmp_path / "control")
    assert gpu_sharing.mps_active()
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    assert str(gpu_sharing.mps_pipe_directory()) == "/tmp/nvidia-mps"  # NVIDIA's default


def test_the_header_says_whether_workers_share_the_gpu_through_mps(monkeypatch,
                                                                   tmp_path) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    note = gpu_sharing.gpu_sharing_note
    assert note(torch.device("cpu"), 4) == ""
    assert note(CUDA, 1) == ""
    assert note(CUDA, 2) == " (no NVIDIA MPS: the workers time-slice the GPU)"
    os.mkfifo(tmp_path / "control")
    assert note(CUDA, 2) == f" (NVIDIA MPS in use: {tmp_path})"


def test_each_worker_gets_a_fair_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(gpu_sharing, "usable_cores", lambda: 16)
    assert [gpu_sharing.worker_threads(jobs) for jobs in (1, 2, 3, 4, 32)] == [16, 8, 5, 4, 1]


@pytest.fixture
def restore_determinism(monkeypatch):
    # Recorded by monkeypatch, so the value set_deterministic writes is undone afterwards.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "recorded")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_deterministic_turns_off_autotuning_and_nondeterministic_kernels(
        restore_determinism) -> None:
    torch.backends.cudnn.benchmark = True

    assert resolve_device("cpu", deterministic=True) == torch.device("cpu")

    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == device_module.CUBLAS_WORKSPACE_CONFIG


def _config(**options):
    defaults = dict(dataset="fashion_mnist", spec=None, trials=2, epochs=None, timeout_s=None,
                    train_subset=None, study_name=None, storage=None, tracking_uri=None,
                    data_dir=None, device="cpu", seed=0, register_name=None, max_failures=5,
                    heartbeat_interval_s=10, jobs=None, compile=False)
    return make_config(**(defaults | options))


def test_the_gpu_options_reach_the_run_config() -> None:
    config = _config(compile=True, compile_mode="reduce-overhead", cuda_graphs=True,
                     deterministic=True)
    assert (config.compile_mode, config.cuda_graphs, config.deterministic) == (
        "reduce-overhead", True, True)
    plain = _config()
    assert (plain.compile_mode, plain.cuda_graphs, plain.deterministic) == (
        "default", False, False)


def test_a_compile_mode_needs_compile_and_must_be_torchs() -> None:
    with pytest.raises(HpsearchError, match=r"^compile_mode max-autotune needs compile$"):
        _config(compile_mode="max-autotune")
    with pytest.raises(HpsearchError, match="choose one of default, reduce-overhead"):
        _config(compile=True, compile_mode="fastest")


def test_run_help_documents_the_gpu_options() -> None:
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--compile-mode [default|reduce-overhead|max-autotune]",
                   "--cuda-graphs / --no-cuda-graphs", "--deterministic"):
        assert option in result.output
    assert "see --deterministic" in " ".join(result.output.split())
