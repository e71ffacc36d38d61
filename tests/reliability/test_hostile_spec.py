"""A spec file is refused in well under a second and a little memory, whatever it holds: an
alias bomb, 50 MB of list, binary noise, an endless device file. The whole ``hpsearch run``
process is measured: it must refuse the file before torch, Optuna or MLflow is imported."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpsearch.studies import SpecError, load_spec
from hpsearch.studies.limits import MAX_SPEC_BYTES, MAX_SPEC_NODES, SpecLoader, SpecTooLarge

from conftest import clean_env
from observations import record

VALID_SPACE = """search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 128
  depth: 1
  width: 16
  dropout: 0.0
"""


def alias_bomb(indent: str) -> str:
    """Anchors nested 9 levels, each a list of 9 references to the one below: 2 KB of
    YAML that stand for 9**9 (387 million) values."""
    names = "abcdefghi"
    lines = [f"{indent}a: &a [x, x, x, x, x, x, x, x, x]"]
    for below, name in zip(names, names[1:]):
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{below}'] * 9)}]")
    return "\n".join(lines) + "\n"


def bomb_under_sampler() -> str:
    # Otherwise valid, so that only the sampler's arguments are wrong (they were expanded
    # by model_dump before the unknown argument was rejected: 8 GB).
    return ("dataset: fashion_mnist\nsampler:\n  name: tpe\n" + alias_bomb("  ") + VALID_SPACE
            + "  arch: mlp\n")


def bomb_under_search_space() -> str:
    return "dataset: fashion_mnist\n" + VALID_SPACE + "  arch:\n    mlp:\n" + alias_bomb("      ")


def write_long_list(path: Path, size: int) -> None:
    with path.open("w") as f:
        f.write("dataset: fashion_mnist\nsearch_space:\n  batch_size:\n")
        i = 0
        while f.tell() < size:
            f.write("".join(f"    - {j}\n" for j in range(i, i + 10_000)))
            i += 10_000


# ------------------------------------------------------------------------ load_spec itself


@pytest.fixture
def memory_cap():
    """This process's address space capped 2 GB above its size for the test, so that a
    loader without limits fails the test with a MemoryError instead of exhausting the
    machine's memory (the alias bombs are only ever loaded in a capped subprocess: pydantic's
    Rust core aborts the process when an allocation fails)."""
    size = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").open()
                if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


LOADER_CASES = {
    "alias inside its own anchor": ("dataset: fashion_mnist\nsearch_space: &s {lr: *s}\n",
                                    "lies inside its own anchor"),
    "100,000 nested lists": ("search_space: " + "[" * 100_000 + "]" * 100_000,
                             "more than 32 levels deep"),
    "20,000 list items": ("dataset: fashion_mnist\nsearch_space:\n  batch_size:\n"
                          + "".join(f"    - {i}\n" for i in range(20_000)),
                          "more than 10,000 values by line"),
    "an integer of 5000 digits": ("dataset: fashion_mnist\nepochs: " + "1" * 5000 + "\n",
                                  "Exceeds the limit (4300 digits)"),
    "binary noise": (b"\xff" + os.urandom(4096), "not UTF-8 text"),
}


@pytest.mark.parametrize("case", LOADER_CASES)
def test_load_spec_refuses_a_hostile_file_at_once(tmp_path, memory_cap, case):
    content, reason = LOADER_CASES[case]
    path = tmp_path / "spec.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    seconds = time.perf_counter() - start
    assert info.value.key == "<file>"
    assert reason in info.value.reason
    assert seconds < 2, seconds  # 0.3 s at most measured on a busy 2-core machine


@pytest.mark.parametrize("bomb", [bomb_under_sampler, bomb_under_search_space])
def test_the_spec_loader_stops_an_alias_bomb_while_composing_it(bomb):
    start = time.perf_counter()
    with pytest.raises(SpecTooLarge, match="more than 10,000 values by line"):
        yaml.load(bomb(), Loader=SpecLoader)
    assert time.perf_counter() - start < 1


def test_a_file_over_the_limit_is_refused_without_being_read(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:  # sparse: 50 MB that take no disk
        f.truncate(50 << 20)
    with monkeypatch.context() as patched, pytest.raises(
            SpecError, match=r"is 52,428,800 bytes; a spec file is at most 262,144 bytes"):
        patched.setattr(Path, "open", lambda *a, **k: pytest.fail("the file was opened"))
        load_spec(path)


def test_an_endless_file_is_read_only_up_to_the_limit(memory_cap):
    with pytest.raises(SpecError, match=f"more than {MAX_SPEC_BYTES:,} bytes"):
        load_spec("/dev/zero")


def test_aliases_within_the_limit_still_work(tmp_path):
    # An anchor reused across branches is a fair use of YAML: kept, expanded, validated.
    path = tmp_path / "spec.yaml"
    path.write_text("dataset: fashion_mnist\nsearch_space:\n"
                    "  lr: &lr {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                    "  batch_size: 128\n  dropout: 0.0\n"
                    "  arch:\n    mlp: {depth: 1, width: 16}\n    cnn: {depth: 2, width: 16}\n")
    spec = load_spec(path)
    assert spec.param("lr").low == pytest.approx(1e-3)
    assert spec.param("arch").branches["cnn"][0].value == 2
    assert MAX_SPEC_NODES == 10_000


# -------------------------------------------------------------- the whole `hpsearch run` process

# Runs `hpsearch run` as its only child and prints the child's return code and peak RSS
# (ru_maxrss of the children of a fresh process: this one child's high-water mark, in KB).
# The child's address space is capped at 4 GB, so that the code before the fix (which ate
# 8 GB) fails the test instead of the machine.
MEASURE = """
import json, resource, subprocess, sys, time
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (4_000_000_000, 4_000_000_000))
start = time.monotonic()
try:
    p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60,
                       preexec_fn=cap)
    rc, out, err = p.returncode, p.stdout, p.stderr
except subprocess.TimeoutExpired as exc:
    rc, out, err = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
print(json.dumps({"rc": rc, "stdout": out, "stderr": err,
                  "seconds": time.monotonic() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_measured(cwd: Path, *args: str) -> dict:
    exe = Path(sys.executable).with_name("hpsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpsearch.cli"]
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd, *args], cwd=cwd,
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    return json.loads(out.stdout)


CLI_CASES = {
    "YAML alias bomb (9 anchors x 9 references) under sampler": bomb_under_sampler,
    "YAML alias bomb under search_space": bomb_under_search_space,
    "50 MB spec file (one long list)": None,
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_hpsearch_run_refuses_a_hostile_spec_in_little_time_and_memory(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    spec = tmp_path / "spec.yaml"
    if CLI_CASES[case] is None:
        write_long_list(spec, 50 << 20)
    else:
        spec.write_text(CLI_CASES[case]())
    result = run_measured(work, "run", "--spec", str(spec), "--trials", "1")
    assert result["rc"] == 2, result
    lines = (result["stdout"] + result["stderr"]).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpsearch: error: {spec}: <file>: ")
    # Measured on a busy 2-core machine: 0.5 to 0.8 s and 46 MB (the interpreter, click,
    # pydantic, PyYAML and numpy); before, 60 s and gigabytes without an answer.
    assert result["seconds"] < 5, result["seconds"]
    assert result["peak_mb"] < 100, result["peak_mb"]
    assert not any(work.iterdir())
    record(f"hostile spec: {case}",
           f"exit code 2 after {result['seconds']:.1f} s at {result['peak_mb']:.0f} MB peak, "
           f"one line: {lines[0].split(': <file>: ')[1][:60]!r}",
           "nothing written in the working directory")


# ------------------------------------------------------------------- keys that imitate others

TINY = "dataset: fashion_mnist\nepochs: 1\npruner: none\n" + VALID_SPACE + "  arch: mlp\n"
LOOKALIKES = {
    # case: (what replaces what in TINY, the key as printed)
    "a non-breaking space in a hyperparameter": (
        ("  batch_size: 128", "  batch\u00a0size: 128"), r"'search_space.batch\xa0size'"),
    "a Cyrillic a in a hyperparameter": (
        ("  batch_size: 128", "  b\u0430tch_size: 128"), r"'search_space.b\u0430tch_size'"),
    "a Cyrillic o in a top-level key": (("epochs: 1", "ep\u043echs: 1"), r"'ep\u043echs'"),
    "a Cyrillic a in a sampler argument": (
        ("pruner: none", "pruner: none\nsampler: {name: tpe, n_st\u0430rtup_trials: 3}"),
        r"'sampler.n_st\u0430rtup_trials'"),
}


@pytest.mark.parametrize("case", LOOKALIKES)
def test_a_key_that_imitates_a_known_one_is_printed_with_escapes(tmp_path, case):
    (old, new), shown = LOOKALIKES[case]
    path = tmp_path / "spec.yaml"
    path.write_text(TINY.replace(old, new))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {shown}: unknown "), message
    assert message.isascii()
    assert info.value.key == shown.strip("'").encode().decode("unicode_escape")  # the real key
    record(f"spec key with {case[2:]} (prints like the real key)",
           f"refused in one line (SpecError; exit code 2 from hpsearch run), the key "
           f"printed as {shown}", "nothing written")
