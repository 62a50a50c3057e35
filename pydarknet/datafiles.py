"""Darknet's dataset description files: ``.data`` (key = value) and ``.names``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .fileio import not_text


class DataFileError(ValueError):
    """A .data or .names file that cannot be used (names file and line)."""


def read_data_file(path):
    """Parses a .data file into a dict of strings (classes, train, valid,
    names, backup, ...). Paths in it are returned as written; see
    resolve_path."""
    path = os.fspath(path)
    lines = _text_lines(path, "data")
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
    """A path from a .data file. Absolute paths are kept; a relative one is
    looked up first in the .data file's folder, then in the working folder
    (darknet's only place). When it is in neither, it is returned as written,
    so a later error names what darknet would have opened."""
    value = os.fspath(value)
    if os.path.isabs(value):
        return value
    folder = os.path.dirname(os.fspath(data_path))
    if folder:
        alt = os.path.join(folder, value)
        if os.path.exists(alt):
            return alt
    return value


def read_names(path):
    path = os.fspath(path)
    return [line.strip() for line in _text_lines(path, "names") if line.strip()]


def _text_lines(path, what):
    """The lines of a text file; DataFileError naming it when it cannot be
    read or is not text."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read {what} file: {e.strerror}") from None
    problem = not_text(data)
    if problem:
        raise DataFileError(f"{path}: {what} file: {problem}")
    return data.decode("utf-8-sig", errors="replace").splitlines()


# darknet's defaults for keys a .data file leaves out (detector.c / classifier.c)
DATA_DEFAULTS = {
    "train": "data/train.txt", "names": "data/names.list", "labels": "data/labels.list",
    "backup": "/backup/", "classes": "1",
}


@dataclass
class DataFile:
    """A parsed .data file with its paths resolved (see resolve_path).
    `options` holds every key as written."""
    path: str
    options: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.options.get(key, default)

    def path_of(self, key, default=None):
        """The resolved path a key names (or `default`, darknet's when None)."""
        value = self.options.get(key)
        if value is None:
            value = default if default is not None else DATA_DEFAULTS.get(key)
            if value is None:
                return None
            if key == "valid" and default is None:
                return self.train
        return resolve_path(value, self.path)

    @property
    def classes(self):
        value = self.options.get("classes", DATA_DEFAULTS["classes"])
        try:
            n = int(value)
        except ValueError:
            try:
                n = float(value)
                if not n.is_integer():
                    raise ValueError
                n = int(n)
            except ValueError:
                raise DataFileError(f"{self.path}: classes = {value!r} is not a whole number") from None
        if n < 1:
            raise DataFileError(f"{self.path}: classes = {n}; at least 1 is needed")
        return n

    @property
    def train(self):
        return self.path_of("train")

    @property
    def valid(self):
        """darknet falls back to the training list when valid= is missing."""
        return self.path_of("valid") if "valid" in self.options else self.train

    @property
    def names_path(self):
        return self.path_of("names")

    @property
    def backup(self):
        return self.path_of("backup")

    def names(self):
        """The class names from names= (None when the key is missing and
        darknet's default file does not exist)."""
        if "names" not in self.options and not os.path.exists(self.names_path):
            return None
        return read_names(self.names_path)


def load_data_file(path):
    """read_data_file as a DataFile (resolved paths, typed classes)."""
    return DataFile(os.fspath(path), read_data_file(path))
