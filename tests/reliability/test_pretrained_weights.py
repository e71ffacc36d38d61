"""A machine without internet and without the weights a spec asks for: the run stops before
anything is written, with one line naming each file and the folder to put it in (exit 2).
In-process through click's CliRunner: the stop comes before the data set is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pretrained_files import offline_cache

from hpsearch.cli import main
from hpsearch.models.weights import weights_file

from observations import record

PRETRAINED_SPEC = """
dataset: fashion_mnist
epochs: 1
search_space:
  lr: 1.0e-3
  batch_size: 32
  dropout: 0.0
  arch:
    resnet18: {pretrained: true, freeze: backbone}
    mobilenet_v3_small: {pretrained: [true, false]}
    cnn: {depth: 2}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("MLFLOW_TRACKING_URI", "HPSEARCH_STORAGE", "HPSEARCH_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    offline_cache(monkeypatch, tmp_path / "torch")
    return work


def test_weights_neither_cached_nor_downloadable_stop_the_run_before_anything_is_written(
        workdir: Path) -> None:
    (workdir / "spec.yaml").write_text(PRETRAINED_SPEC)

    result = CliRunner().invoke(main, ["run", "--spec", "spec.yaml", "--trials", "1",
                                       "--device", "cpu"])

    folder = weights_file("resnet18").parent
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert [line for line in lines if line.startswith("hpsearch: error:")] == [lines[-1]]
    assert lines[-1].startswith(
        "hpsearch: error: pretrained weights of resnet18, mobilenet_v3_small not available: "
        f"resnet18-f37072fd.pth, mobilenet_v3_small-047dcff4.pth not in {folder} (could not "
        "be downloaded: URLError: ")
    assert lines[-1].endswith(f"put them in {folder} (that is $TORCH_HOME/hub/checkpoints), "
                              "or use pretrained: false")
    assert "Traceback" not in result.output
    assert {p.name for p in workdir.iterdir()} == {"spec.yaml"}  # no store, no mlruns
    record("pretrained weights neither cached nor downloadable (spec asks for them)",
           "exit code 2 before the data set is read, one line naming each file and the "
           "folder to put it in",
           "nothing written in the working directory")
