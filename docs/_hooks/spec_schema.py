"""MkDocs hook: fills docs/reference/spec-schema.md with the study spec's JSON Schema, generated
at build time from ``hpsearch.studies.spec_schema()`` (the same schema as ``hpsearch spec
schema``), so the page cannot drift from the code and no copy is checked in.

The page holds the marker ``<!-- spec-schema -->``; it is replaced by a table of the top-level
keys (type, default, description) and the whole schema as JSON.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "<!-- spec-schema -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: replace the marker on the page that holds it."""
    if MARKER not in markdown:
        return markdown
    from hpsearch.studies import spec_schema

    schema = spec_schema()
    return markdown.replace(MARKER, _keys_table(schema) + "\n\n" + _full_schema(schema))


def _keys_table(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", ()))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in schema["properties"].items():
        default = "required" if key in required else _code(prop.get("default"))
        rows.append(f"| `{key}` | {_type(prop)} | {default} | "
                    f"{_cell(prop.get('description', ''))} |")
    return "\n".join(rows)


def _type(prop: dict[str, Any]) -> str:
    """A short, readable type: the enum's values where there is one."""
    if "enum" in prop:
        return " \\| ".join(f"`{value}`" for value in prop["enum"])
    for alternatives in ("anyOf", "oneOf"):
        if alternatives in prop:
            names = [_type(alt) for alt in prop[alternatives]]
            return " or ".join(name for name in names if name != "`null`")
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if prop.get("type") == "object" and "additionalProperties" in prop:
        return "mapping"
    return f"`{prop.get('type', 'any')}`"


def _code(value: Any) -> str:
    return "" if value is None else f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    # Braces as entities: attr_list would read a trailing "{...}" as HTML attributes.
    return (text.replace("|", "\\|").replace("\n", " ").replace("{", "&#123;")
            .replace("}", "&#125;"))


def _full_schema(schema: dict[str, Any]) -> str:
    return f"```json\n{json.dumps(schema, indent=2)}\n```"
