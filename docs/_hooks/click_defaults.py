"""MkDocs hook: in the command-line reference that mkdocs-click generates, an option without a
default (click 8.2+ keeps it as its ``UNSET`` sentinel, e.g. ``--help``) shows an empty
Default cell instead of ``Sentinel.UNSET``."""

from __future__ import annotations

from typing import Any

UNSET_CELL = "<td><code>Sentinel.UNSET</code></td>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: the page's HTML, after Markdown."""
    return html.replace(UNSET_CELL, "<td></td>")
