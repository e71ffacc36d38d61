"""``benchmarks/sampler_overhead.py``: the built-in study's sampler and pruner driven by a
synthetic objective, a few trials, end to end (the figures are taken at hundreds)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]


def test_sampler_overhead_times_every_window_and_rewrites_its_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    before = docs.read_text()

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sampler_overhead.py"), "--trials", "12",
         "--window", "6", "--write-docs", "--docs", str(docs)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(ROOT)))

    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["trials"] for r in records] == [6, 12]
    assert all(r["ask_ms"] > 0 and r["prune_ms"] > 0 and r["tell_ms"] > 0 for r in records)
    assert all(0.0 <= r["pruned_share"] <= 1.0 for r in records)
    text = docs.read_text()
    assert "<!-- bench:sampler_overhead -->" in text and "| 7-12 |" in text
    # Every other section is left as it was.
    assert _without_section(text) == _without_section(before)


def _without_section(text: str) -> str:
    return re.sub(r"<!-- bench:sampler_overhead -->.*?<!-- /bench:sampler_overhead -->\n?", "",
                  text, flags=re.DOTALL).rstrip("\n")
