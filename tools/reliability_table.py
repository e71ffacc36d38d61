"""Write docs/reliability.md from what the reliability tests observed.

    HPSEARCH_RELIABILITY_LOG=/tmp/reliability.jsonl python -m pytest tests/reliability
    python tools/reliability_table.py /tmp/reliability.jsonl > docs/reliability.md

Each line of the log is one fault a test tried, recorded after its assertions passed
(``tests/reliability/observations.py``).
"""

from __future__ import annotations

import json
import sys
from datetime import date


def main(path: str) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # In the order of the faults' names: the suite's xdist workers write in any order.
    rows.sort(key=lambda row: row["fault"].lower())
    print("# Reliability: faults tried and what was kept\n")
    print(f"Generated on {date.today()} by `tools/reliability_table.py` from the log of one run "
          "of `tests/reliability/` (each row is written by a test after its assertions "
          "passed). Re-create it with the commands in that script's docstring.\n")
    print("| fault tried | what happened | what was kept |")
    print("|---|---|---|")
    for row in rows:
        cells = (row[k].replace("|", "\\|") for k in ("fault", "happened", "kept"))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
