"""Darknet's dataset description files: ``.data`` (key = value) and ``.names``."""
from __future__ import annotations

import os


class DataFileError(ValueError):
    """A .data or .names file that cannot be used (names file and line)."""


def read_data_file(path):
    """Parses a .data file into a dict of strings (classes, train, valid,
    names, backup, ...). Paths in it are returned as written; see
    resolve_path."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read data file: {e.strerror}") from None
    out = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise DataFileError(f"{path}:{n}: expected 'key = value', got {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        out.setdefault(key, value)
    return out


def resolve_path(value, data_path):
    """A path from a .data file: as written if it exists (darknet's way,
    relative to the working folder), else relative to the .data file's folder."""
    if os.path.isabs(value) or os.path.exists(value):
        return value
    alt = os.path.join(os.path.dirname(os.path.abspath(os.fspath(data_path))), value)
    return alt if os.path.exists(alt) else value


def read_names(path):
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError as e:
        raise DataFileError(f"{path}: cannot read names file: {e.strerror}") from None
