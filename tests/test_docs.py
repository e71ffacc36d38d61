"""The documentation: the MkDocs site builds with no warning (no broken link, no missing
reference, every generated page generated), and README.md stays short, links only to files
that exist, and keeps the Quickstart's two lines exactly as `.ci/run` runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
    "hpsearch run --trials 50 --dataset fashion_mnist",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -q -c constraints.txt "
    "-e '.[test]' && python -m pytest",
)
# [text](target) and ![alt](target), the target up to a space or the closing parenthesis.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(markdown: str) -> list[str]:
    targets = MARKDOWN_LINK.findall(markdown)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not
            t.startswith("#")]


def test_mkdocs_build_strict_passes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert not warnings, warnings
    # The generated reference pages hold what the code says today.
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("hpsearch run", "hpsearch serve", "hpsearch spec schema", "--trials"):
        assert command in cli, command
    assert "Sentinel.UNSET" not in cli
    api = (site / "reference" / "python-api" / "index.html").read_text()
    for name in ("api.run", "search.config.StudySummary", "studies.load_spec",
                 "studies.spec_schema", "models.list_models", "models.register_model",
                 "data_utils.list_datasets", "data_utils.register_dataset",
                 "data_utils.load_dataset"):
        assert f'id="hpsearch.{name}"' in api, name
    # Sphinx roles in docstrings became links or code (docs/_hooks/griffe_rst.py).
    assert ":class:`" not in api and ":func:`" not in api
    schema = (site / "reference" / "spec-schema" / "index.html").read_text()
    assert "<!-- spec-schema -->" not in schema
    assert "search_space" in schema and '"$defs"' in schema  # the whole schema, as JSON


def test_readme_links_point_to_files_that_exist() -> None:
    links = _relative_links(README.read_text())
    assert links, "README.md links into docs/"
    missing = [t for t in links if not (ROOT / unquote(t.split("#")[0])).exists()]
    assert not missing, missing


def test_the_link_check_finds_a_missing_file() -> None:
    links = _relative_links("[a](docs/nope.md) [b](https://x.org/y) ![c](docs/x.png) [d](#e)")
    assert links == ["docs/nope.md", "docs/x.png"]


def test_readme_is_at_most_200_lines_and_keeps_the_quickstart() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    lines = text.splitlines()
    start = lines.index("## Quickstart")
    block = lines[lines.index("```bash", start) + 1:]
    assert block[:3] == [*QUICKSTART, "```"], block[:3]


def test_ci_runs_the_readme_test_line_as_written() -> None:
    assert QUICKSTART[1] in (ROOT / ".ci" / "run").read_text().splitlines()
