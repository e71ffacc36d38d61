"""The ``gpu_report`` section of docs/benchmarks.md and the README lines, from the records of
``gpu_report.py``'s parts (see its docstring for what each part measures)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from _common import machine_info, markdown_table, render_section

__all__ = ["HOW_TO_RUN", "docs_section", "readme_lines"]

HOW_TO_RUN = """\
On the GPU machine, from the project root (`../shared/gpu/prepare-bundle.sh`, run before on
the CPU machine, fills `.whl/` and `.data/`; carry both):

```bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
    --target /tmp/site .whl/*.whl \\
  && export PYTHONPATH=/tmp/site:$PWD HPSEARCH_DATA_DIR=$PWD/.data PYTHONUNBUFFERED=1 || exit; \\
python3 benchmarks/gpu_report.py     # about 25 min on one H100; --quick: under 6 min
```

Everything lands in `$OUT/gpu-report` (else `./gpu-report-DATE`): `report.json`, this
section (`report.md`), `readme_gpu.md`, and `benchmarks.md`, this file with the section
rewritten. Where one command may run 10 minutes at most, give the same first line four
times with `--parts tests,throughput,mlflow`, `--parts step_modes`, `--parts
search_jobs1,streaming` and `--parts search_default` instead (9 minutes at most each),
then merge the four folders that come back:
`python benchmarks/gpu_report.py --merge RUN1 RUN2 RUN3 RUN4`."""

Parts = Mapping[str, Mapping[str, Any]]
DEFAULT_CNN = "cnn depth 3 width 32"


def _records(parts: Parts, name: str) -> list[dict[str, Any]]:
    """The records of part ``name`` (``search``: of both search parts), summaries left out."""
    names = ("search_jobs1", "search_default") if name == "search" else (name,)
    return [r for n in names for r in parts.get(n, {}).get("records", [])
            if not r.get("summary")]


def _summary(parts: Parts, name: str) -> dict[str, Any]:
    return next((r for r in parts.get(name, {}).get("records", []) if r.get("summary")), {})


def _met(value: float | None, check: Callable[[float], bool], judged: bool) -> str:
    if value is None:
        return "not measured"
    if not judged:
        return "-"
    return "yes" if check(value) else "**no**"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def summary_rows(parts: Parts, *, judged: bool) -> list[dict[str, str]]:
    """The issue's targets against what was measured; ``judged`` only for a full run on a
    GPU (the targets are an H100's)."""
    rows = []
    cnn512 = next((r for r in _records(parts, "throughput")
                   if r.get("arch") == "cnn" and r.get("batch_size") == 512), None)
    ratio = cnn512 and cnn512.get("ratio")
    rows.append({"figure": f"trainer / DataLoader loop, {DEFAULT_CNN}, batch 512",
                 "target": ">= 20x",
                 "measured": "-" if not cnn512 else
                 f"{ratio:.1f}x ({cnn512['hpsearch_images_per_s']:,.0f} vs "
                 f"{cnn512['conventional_images_per_s']:,.0f} img/s)",
                 "met": _met(ratio, lambda v: v >= 20, judged)})
    epochs = {r["mode"]: r for r in _records(parts, "step_modes") if r.get("batch_size") == 512}
    best = min((r["epoch_s"] for r in epochs.values()), default=None)
    images = next(iter(epochs.values()), {}).get("train_images", 54000)
    rows.append({"figure": f"one {images:,}-image epoch, {DEFAULT_CNN}, batch 512",
                 "target": "<= 0.5 s",
                 "measured": "; ".join(f"{m} {r['epoch_s']:.2f} s" for m, r in epochs.items())
                 or "-",
                 "met": _met(best, lambda v: v <= 0.5, judged)})
    for run in _records(parts, "search"):
        finished = (run.get("complete") or 0) + (run.get("pruned") or 0)
        rows.append({"figure": f"`hpsearch run {run.get('budget', '')}`, --jobs {run['jobs']}",
                     "target": "<= 5 min, 50 trials",
                     "measured": f"{_minutes(run.get('wall_s'))}, {finished} finished "
                                 f"({run.get('complete', 0)} complete, {run.get('pruned', 0)} "
                                 f"pruned, {run.get('failed', 0)} failed)",
                     "met": _met(run.get("wall_s"),
                                 lambda v, f=finished: v <= 300 and f >= 50, judged)})
        accuracy = run.get("test_accuracy")
        rows.append({"figure": f"champion test accuracy, --jobs {run['jobs']}",
                     "target": ">= 94.0%",
                     "measured": "-" if accuracy is None else f"{accuracy:.2%}",
                     "met": _met(accuracy, lambda v: v >= 0.94, judged)})
    share = _summary(parts, "mlflow").get("mlflow_share")
    rows.append({"figure": "MLflow share of a trial's wall time", "target": "< 3%",
                 "measured": "-" if share is None else f"{share:.1%}",
                 "met": _met(share, lambda v: v < 0.03, judged)})
    tests = next(iter(parts.get("tests", {}).get("records", [])), None)
    rows.append({"figure": "GPU tests (`pytest -m gpu tests/gpu`)", "target": "all pass",
                 "measured": "-" if not tests else
                 f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                 f"{tests['skipped']} skipped",
                 "met": _met(tests and tests["failures"] + tests["errors"],
                             lambda v: v == 0 and tests["passed"] > 0, judged)})
    return rows


def cuda_graph_verdict(parts: Parts, *, margin: float = 0.05) -> str:
    """Whether the captured CUDA-graph step beat eager by ``margin`` (5%) and
    reduce-overhead at every batch size measured: the rule for turning it on by default."""
    by_batch: dict[int, dict[str, dict[str, Any]]] = {}
    for r in _records(parts, "step_modes"):
        by_batch.setdefault(r["batch_size"], {})[r["mode"]] = r
    lines, wins = [], []
    for batch, modes in sorted(by_batch.items()):
        graph, eager = modes.get("cuda-graphs"), modes.get("eager")
        if graph is None or eager is None:
            continue
        if not graph["step_mode"].startswith("cuda graph"):
            lines.append(f"batch {batch}: no graph ({graph['step_mode']})")
            wins.append(False)
            continue
        rivals = {m: modes[m]["epoch_s"] for m in ("eager", "compile-reduce-overhead")
                  if m in modes}
        wins.append(graph["epoch_s"] <= (1 - margin) * rivals["eager"]
                    and graph["epoch_s"] < rivals.get("compile-reduce-overhead", float("inf")))
        lines.append(f"batch {batch}: {graph['epoch_s']:.3f} s vs "
                     + ", ".join(f"{m} {s:.3f} s" for m, s in rivals.items()))
    if not lines:
        return "CUDA-graph step against eager: not measured."
    verdict = (f"at least {margin:.0%} faster than eager, and faster than reduce-overhead "
               "where measured, at every batch size: turn `--cuda-graphs` on by default on "
               "CUDA" if all(wins) else "not a clear win everywhere: keep `--cuda-graphs` "
               "off by default")
    return f"CUDA-graph step ({'; '.join(lines)}): {verdict}."


THROUGHPUT = {"arch": "model", "batch_size": "batch", "hpsearch_images_per_s": "trainer img/s",
              "conventional_images_per_s": "DataLoader loop img/s", "ratio": "ratio"}
STEP_MODES = {"batch_size": "batch", "mode": "mode", "train_images": "images",
              "first_epoch_s": "1st epoch (s)", "epoch_s": "epoch (s)",
              "images_per_s": "img/s", "kernels_per_step": "kernels/step",
              "launch_calls_per_step": "launch calls/step", "gpu_busy_share": "GPU busy",
              "peak_gpu_mb": "peak GPU (MiB)", "step_mode": "training step"}
STREAMING = {"arch": "model", "image_size": "px", "batch_size": "batch",
             "train_images": "images/epoch", "data_mb": "data (MB)",
             "resident_images_per_s": "resident img/s",
             "streamed_images_per_s": "streamed img/s", "ratio": "streamed / resident",
             "resident_loader_epoch_s": "resident loader alone (s/epoch)",
             "streamed_loader_epoch_s": "streamed loader alone (s/epoch)",
             "resident_peak_gpu_mb": "resident peak GPU (MiB)",
             "streamed_peak_gpu_mb": "streamed peak GPU (MiB)"}
SEARCH = {"jobs": "--jobs", "wall_s": "wall (s)", "complete": "complete",
          "pruned": "pruned", "failed": "failed", "best_val": "best val accuracy",
          "test_accuracy": "champion test accuracy",
          "gpu_mb_per_worker_max": "GPU MiB per worker (peak)",
          "peak_gpu_used_mb": "GPU MiB in use (peak)", "header": "run header"}


def _machine(parts: Parts, device: str) -> dict[str, Any]:
    """What the figures were measured on: the environment part's record (taken there), else
    this machine."""
    environment = next(iter(parts.get("environment", {}).get("records", [])), None)
    return environment or machine_info(torch.device(device))


def docs_section(parts: Parts, *, profile: str, device: str, commands: list[str],
                 date: str) -> str:
    """The ``gpu_report`` section of docs/benchmarks.md.

    Args:
        parts: part name -> its result (``status``, ``records``, ``reason``).
        profile: ``full``, ``quick``, ``cpu-quick`` or ``mixed`` (merged runs).
        device: ``cuda`` or ``cpu``.
        commands: the commands that measured them.
        date: when (ISO date).
    """
    judged = profile == "full" and device == "cuda"
    environment = _machine(parts, device)
    blocks = [HOW_TO_RUN, markdown_table(summary_rows(parts, judged=judged),
                                         {"figure": "figure", "target": "target (H100)",
                                          "measured": "measured", "met": "met"}),
              cuda_graph_verdict(parts)]
    for title, name, columns in (("Trainer against the DataLoader loop", "throughput",
                                  THROUGHPUT),
                                 ("Training-step modes", "step_modes", STEP_MODES),
                                 ("Data resident on the device against streamed from host "
                                  "memory (a memory map; the same batches)", "streaming",
                                  STREAMING),
                                 ("`hpsearch run`", "search", SEARCH)):
        if _records(parts, name):
            blocks.append(f"**{title}**\n\n" + markdown_table(_records(parts, name), columns))
    mps = environment.get("mps")
    blocks.append(f"NVIDIA MPS: {'in use' if mps else 'not running'}; default `--jobs` "
                  f"here: {environment.get('default_jobs', '-')}.")
    blocks.append("Parts: " + "; ".join(
        f"{name} {part.get('status')}"
        + (f" ({part['reason'][:300]})" if part.get("reason") else "")
        for name, part in parts.items()) + ".")
    notes = ("" if judged else
             f"Profile `{profile}` on {device}: small budgets that exercise every part; the "
             "targets are an H100's and are judged only for a full run on a GPU.")
    return render_section("gpu_report", title="GPU report: every GPU figure in one run",
                          machine=environment, body="\n\n".join(blocks), notes=notes,
                          commands=commands, date=date)


def readme_lines(parts: Parts, device: str) -> str:
    """The summary as markdown bullets, for README.md's "Measured" GPU paragraph."""
    gpu = _machine(parts, device).get("gpu") or device
    lines = [f"Measured on {gpu} by `python benchmarks/gpu_report.py`:"]
    lines += [f"- {row['figure']}: {row['measured']} (target {row['target']})"
              for row in summary_rows(parts, judged=False)]
    lines.append(f"- {cuda_graph_verdict(parts)}")
    return "\n".join(lines) + "\n"
