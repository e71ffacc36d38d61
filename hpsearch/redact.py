"""URLs as hpsearch shows them: with any password replaced by ``***``.

A storage URL (``postgresql://user:SECRET@host/db``, from ``--storage`` or
``HPSEARCH_STORAGE``) or a tracking URI (``https://user:SECRET@host``) must reach the
database or the server, but never a param, a tag, a progress line or an error message.
"""

from __future__ import annotations

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``, rendered by SQLAlchemy's own
    ``URL.render_as_string(hide_password=True)``; a URL without a password, or a string that
    is not a URL, comes back unchanged."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)
