"""Griffe extension for the API reference: hpsearch's docstrings are Google style with a few
reStructuredText habits (``:func:`name```, ``:class:`~a.b.C```, a paragraph ending in ``::``
before a code block). Markdown would show those as written; this turns each role into a
cross-reference that links where the object is documented on the site and stays plain code
where it is not (autorefs' optional references: never a broken link), and ``::`` into ``:``.

Declared under mkdocstrings' ``extensions`` in mkdocs.yml; the docstrings themselves stay as
they are (``help()`` reads them too).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :func:`target`, :class:`~pkg.mod.Name`, :data:`NAME` ... (Sphinx's Python domain roles).
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::$", re.MULTILINE)


def _reference(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


class RstRoles(griffe.Extension):
    """Rewrites Sphinx roles and ``::`` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(_reference, obj.docstring.value)
            obj.docstring.value = LITERAL_BLOCK.sub(r"\1:", text)
