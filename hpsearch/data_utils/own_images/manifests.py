"""A CSV, TSV or JSONL manifest: one image per row (JSONL: per line, a JSON object), with a
path column, a label column and an optional split column (``train``, ``val``, ``valid`` or
``validation``, ``test``, in any case; an empty cell means ``train``). Relative paths are
relative to the manifest's folder. A ``.csv`` file's delimiter is the comma, unless its header
row has none and has a semicolon (a spreadsheet's export where the comma is the decimal
mark), a tab or a ``|``; a ``.tsv`` file's is the tab.
The formats of Ludwig (a CSV of paths) and Azure ML's AutoML for images (JSONL, with
``path_column="image_url"``) fit this.

A row that cannot be used (empty path or label, a file that does not exist, a path listed
again, an unknown split, a line that is not JSON) is skipped with the row's line number and
the reason; a manifest without a path or label column cannot be used at all.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hpsearch.data_utils.own_images.records import (
    SPLIT_FOLDERS,
    ImageDataError,
    SkippedFile,
    Source,
    os_reason,
    sort_labels,
    unread_format_reason,
)

__all__ = ["scan_manifest"]

Row = tuple[int, dict]  # (line number, the row's columns)


def scan_manifest(path: Path, *, path_column: str, label_column: str,
                  split_column: str | None) -> Source:
    """The :class:`Source` a manifest lists (digest not yet set).

    Raises:
        ImageDataError: the manifest cannot be read, is empty, or has no ``path_column`` or
            ``label_column`` (the message lists the columns it has).
    """
    try:
        rows, columns = (_read_jsonl(path) if path.suffix.lower() == ".jsonl"
                         else _read_csv(path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImageDataError(f"{path}: cannot read the manifest: {exc}") from exc
    missing = [c for c in (path_column, label_column) if c not in columns]
    if missing:
        has = ", ".join(sorted(columns)) or "none"
        raise ImageDataError(f"{path}: no {' or '.join(repr(c) for c in missing)} column "
                             f"(columns found: {has}); name them with path_column / "
                             "label_column (--path-column / --label-column)")
    use_split = split_column is not None and split_column in columns
    kept: list[tuple[str, str, str, int, int, int]] = []  # name, file, label, split, size, mtime
    skipped: list[SkippedFile] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, str):  # a line that did not parse
            skipped.append(SkippedFile(f"line {line}", row))
            continue
        name = _cell(row.get(path_column))
        label = _cell(row.get(label_column))
        split_text = _cell(row.get(split_column)) if use_split else ""
        shown = name or f"line {line}"
        reason, file, st = _check_row(path.parent, name, label, split_text)
        if reason is None:
            if file in first_line:
                reason = f"listed again (first on line {first_line[file]})"
            else:
                first_line[file] = line
        if reason is not None:
            skipped.append(SkippedFile(shown, f"line {line}: {reason}"))
            continue
        split = SPLIT_FOLDERS[split_text.lower()] if split_text else (0 if use_split else -1)
        kept.append((name, file, label, split, st.st_size, st.st_mtime_ns))
    class_names = sort_labels([row[2] for row in kept])
    index = {name: i for i, name in enumerate(class_names)}
    return Source(
        path=path, kind="manifest", class_names=class_names,
        files=tuple(r[1] for r in kept), names=tuple(r[0] for r in kept),
        labels=tuple(index[r[2]] for r in kept), splits=tuple(r[3] for r in kept),
        sizes=tuple(r[4] for r in kept), mtimes=tuple(r[5] for r in kept),
        skipped=tuple(skipped), split_origin="column" if use_split else "")


def _cell(value: object) -> str:
    return "" if value is None else str(value).strip()


def _check_row(folder: Path, name: str, label: str,
               split: str) -> tuple[str | None, str, os.stat_result | None]:
    """(reason the row is skipped or None, the absolute file path, its stat)."""
    if not name:
        return "empty path", "", None
    if not label:
        return "empty label", "", None
    if split and split.lower() not in SPLIT_FOLDERS:
        return f"split {split!r} is not train, val (valid, validation) or test", "", None
    file = os.path.normpath(folder / name)
    try:
        st = os.stat(file)
    except FileNotFoundError:
        return "does not exist", file, None
    except OSError as exc:
        return os_reason(exc), file, None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", file, None
    unread = unread_format_reason(name)
    if unread is not None:
        return unread, file, None
    return None, file, st


def _read_csv(path: Path) -> tuple[list[Row], set[str]]:
    # utf-8-sig: spreadsheet programs start their CSV files with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as f:
        delimiter = _delimiter(path, f.readline())
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = {c.strip() for c in reader.fieldnames or ()}
        rows = [(reader.line_num, {k.strip(): v for k, v in row.items() if k is not None})
                for row in reader]
    if not columns:
        raise ImageDataError(f"{path}: empty manifest (no header row)")
    return rows, columns


def _delimiter(path: Path, header: str) -> str:
    """The tab for a .tsv; else the comma, or the first of ``;``, tab, ``|`` found in a
    header row without a comma."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    if "," in header:
        return ","
    return next((d for d in (";", "\t", "|") if d in header), ",")


def _read_jsonl(path: Path) -> tuple[list[Row], set[str]]:
    rows: list = []
    columns: set[str] = set()
    for line, text in _lines(path):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append((line, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(row, dict):
            rows.append((line, "not a JSON object"))
            continue
        columns |= set(row)
        rows.append((line, row))
    if not rows:
        raise ImageDataError(f"{path}: empty manifest (no JSON lines)")
    return rows, columns


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                yield number, text
