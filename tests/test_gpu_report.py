"""``benchmarks/gpu_report.py --quick --device cpu``: the GPU report's dry run, end to end on
this CPU, so that a GPU machine's few minutes are not spent finding its bugs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_fashion_mnist
def test_the_quick_gpu_report_runs_every_part_on_a_cpu(tmp_path: Path) -> None:
    docs, out = tmp_path / "benchmarks.md", tmp_path / "out"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    before = docs.read_text()

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), "--quick", "--device",
         "cpu", "--out", str(out), "--docs", str(docs)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(ROOT)))

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["profile"] == "cpu-quick"
    assert {name: part["status"] for name, part in report["parts"].items()} == {
        **{name: "ok" for name in ("environment", "tests", "throughput", "step_modes",
                                   "mlflow", "streaming", "search_jobs1")},
        "search_default": "skipped"}  # the default --jobs is 1 on a CPU
    tests = report["parts"]["tests"]["records"][0]
    assert tests["failures"] == tests["errors"] == 0 and tests["skipped"] == tests["tests"]
    modes = {r["mode"]: r for r in report["parts"]["step_modes"]["records"]}
    assert set(modes) == {"eager", "cuda-graphs", "compile"}
    assert modes["cuda-graphs"]["step_mode"] == ("eager (CUDA graphs need a CUDA device; "
                                                 "training on cpu)")
    assert all(r["epoch_s"] > 0 and r["aten_ops_per_step"] > 0 for r in modes.values())
    (search,) = report["parts"]["search_jobs1"]["records"]
    assert search["complete"] == 2 and search["test_accuracy"] is not None
    assert report["parts"]["mlflow"]["records"][-1]["summary"]
    (streaming,) = report["parts"]["streaming"]["records"]
    assert streaming["resident_images_per_s"] > 0 and streaming["streamed_images_per_s"] > 0
    assert streaming["per_trial_copy_s"] >= 0  # what keeping the splits resident saves
    # The same batches from both loaders: on a CPU the same training to the last bit.
    assert streaming["streamed_final_loss"] == streaming["resident_final_loss"]
    # The section is rewritten; the rest of the docs file is left as it was.
    section = (out / "report.md").read_text()
    assert docs.read_text() == (out / "benchmarks.md").read_text()
    assert section in docs.read_text()
    assert docs.read_text().replace(section, "") == before.replace(
        before[before.index("<!-- bench:gpu_report -->"):
               before.index("<!-- /bench:gpu_report -->") + len("<!-- /bench:gpu_report -->\n")],
        "")
    assert "CUDA-graph step (batch 128: no graph" in section
    assert "**Data resident on the device against streamed from host memory" in section
    assert (out / "readme_gpu.md").read_text().startswith("Measured on cpu")


def _h100_run(parts: dict, command: str) -> dict:
    return {"profile": "full", "device": "cuda", "date": "2027-01-05", "command": command,
            "parts": parts}


ENVIRONMENT = {"status": "ok", "records": [{
    "cpu": "Intel Xeon", "cores": 16, "torch_threads": 16, "host_memory_gb": 125.0,
    "gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gb": 79.1, "device": "cuda",
    "torch": "2.15.0", "cuda": "13.2", "python": "3.12.3", "mps": False,
    "default_jobs": 2}]}


def _step(mode: str, batch: int, epoch_s: float, step_mode: str = "eager (CUDA graphs off)"):
    return {"mode": mode, "batch_size": batch, "epoch_s": epoch_s, "train_images": 54016,
            "step_mode": step_mode}


def test_merged_runs_make_one_section_judged_against_the_h100_targets(tmp_path) -> None:
    captured = "cuda graph (whole step captured after 3 eager warm-up steps, batch 512)"
    first = _h100_run({"environment": ENVIRONMENT, "throughput": {"status": "ok", "records": [
        {"arch": "cnn", "batch_size": 512, "ratio": 24.2, "hpsearch_images_per_s": 121000,
         "conventional_images_per_s": 5000}]}, "step_modes": {"status": "ok", "records": [
            _step("eager", 512, 0.62), _step("cuda-graphs", 512, 0.31, captured),
            _step("compile-reduce-overhead", 512, 0.35)]}},
        "python benchmarks/gpu_report.py --parts throughput,step_modes")
    second = _h100_run({"search_jobs1": {"status": "ok", "records": [
        {"jobs": "1", "budget": "--trials 50", "wall_s": 280.0, "complete": 30, "pruned": 20,
         "failed": 0, "test_accuracy": 0.9391}]},
        "mlflow": {"status": "ok", "records": [{"summary": True, "mlflow_share": 0.021}]}},
        "python benchmarks/gpu_report.py --parts search_jobs1,mlflow")
    for name, run in (("run1", first), ("run2", second)):
        (tmp_path / name / "gpu-report").mkdir(parents=True)
        (tmp_path / name / "gpu-report" / "report.json").write_text(json.dumps(run))
    docs = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), "--merge",
         str(tmp_path / "run1"), str(tmp_path / "run2"), "--out", str(tmp_path / "out"),
         "--docs", str(docs)], capture_output=True, text=True, timeout=300,
        env=clean_env(PYTHONPATH=str(ROOT)))

    assert result.returncode == 0, result.stderr[-3000:]
    section = (tmp_path / "out" / "report.md").read_text()
    assert section in docs.read_text()
    assert "Machine: Intel Xeon, 16 cores" in section and "GPU NVIDIA H100 80GB HBM3" in section
    assert "Date: 2027-01-05" in section
    assert "--parts throughput,step_modes`; `python" in section  # both commands
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines()
            if line.startswith("| ")}
    assert rows["trainer / DataLoader loop, cnn depth 3 width 32, batch 512"].endswith(
        "| >= 20x | 24.2x (121,000 vs 5,000 img/s) | yes |")
    assert rows["one 54,016-image epoch, cnn depth 3 width 32, batch 512"].endswith(
        "eager 0.62 s; cuda-graphs 0.31 s; compile-reduce-overhead 0.35 s | yes |")
    assert rows["`hpsearch run --trials 50`, --jobs 1"].endswith(
        "| 4.7 min, 50 finished (30 complete, 20 pruned, 0 failed) | yes |")
    assert rows["champion test accuracy, --jobs 1"].endswith("| 93.91% | **no** |")
    assert rows["MLflow share of a trial's wall time"].endswith("| 2.1% | yes |")
    assert ("turn `--cuda-graphs` on by default on CUDA" in section)
    readme = (tmp_path / "out" / "readme_gpu.md").read_text()
    assert readme.startswith("Measured on NVIDIA H100 80GB HBM3")
