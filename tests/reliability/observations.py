"""What the reliability tests saw, for ``docs/reliability.md``.

When ``HPSEARCH_RELIABILITY_LOG`` names a file, each test appends one JSON line per fault:
what was tried, what happened and what was kept, from the stores it just checked. Tests
record only after their assertions passed. ``tools/reliability_table.py`` turns the file
into the table in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os


def record(fault: str, happened: str, kept: str) -> None:
    path = os.environ.get("HPSEARCH_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, "happened": happened, "kept": kept}) + "\n")
