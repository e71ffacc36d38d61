"""The ``hpsearch`` command line: parses options and calls into the package, nothing more.

One module per group of commands: ``run``; ``data inspect`` and ``data cache``; ``predict``,
``serve`` and ``ui``; ``studies``, ``show``, ``register`` and ``spec``. Each command imports
what it needs when it runs, so the read-only ones answer without torch or MLflow.
"""

from hpsearch.cli import data, run, serving, studies  # noqa: F401  (each registers its commands)
from hpsearch.cli.common import main

__all__ = ["main"]
