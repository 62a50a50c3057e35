"""Problems found in training data, and their running tally.

Readers never stop on bad data. Each problem is one ``Issue`` (its kind, the
file, the line when there is one, and what is wrong); a :class:`DataSummary`
counts each distinct problem once, logs it as a warning the first time it is
seen (logger ``pydarknet``), and keeps the first few of each kind for a report.
Workers in other threads or processes return their issues with the data they
made and the loader records them in the main thread, so a problem is counted
once however many times its file is read.
"""
from __future__ import annotations

import logging
import threading
from collections import namedtuple

log = logging.getLogger("pydarknet")

__all__ = ["DataError", "Issue", "DataSummary", "ISSUE_KINDS"]


class DataError(ValueError):
    """Training data that cannot be used at all (message names the file)."""


Issue = namedtuple("Issue", "kind path line message")
Issue.__new__.__defaults__ = (None, "")

# kind -> (what it means, whether it is logged as a warning)
ISSUE_KINDS = {
    "missing_image": ("image file not found; left out", True),
    "corrupt_image": ("image cannot be decoded; left out", True),
    "missing_label": ("label file not found; the image counts as having no objects", True),
    "malformed_line": ("label line is not 'class x y w h'; line skipped", True),
    "bad_class": ("class id outside 0..classes-1; line skipped", True),
    "zero_size_box": ("box with zero or negative width or height; line skipped", True),
    "box_outside": ("box entirely outside the image (or centred at 0,0, which darknet rejects); line skipped",
                    True),
    "clipped_box": ("box partly outside the image; clipped to it", False),
    "class_match": ("classifier image path names no class or several classes", True),
}


def printable(text):
    """A path or message read from a file, shown safely: bytes that are not UTF-8 (kept as surrogate escapes so
    the path still opens) written as backslash escapes, so logs, reports and other processes can carry it."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _format(issue):
    where = issue.path if issue.line is None else f"{issue.path}:{issue.line}"
    return printable(f"{where}: {issue.message}" if issue.message else where)


class DataSummary:
    """Counts of distinct data problems per kind (see ISSUE_KINDS)."""

    keep = 5             # examples kept per kind
    shown_per_file = 3   # warnings logged per kind and file (bad lines of one label file)
    shown_per_kind = 100 # warnings logged per kind; the rest are only counted

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = set()
        self._shown = {}
        self.counts = {k: 0 for k in ISSUE_KINDS}
        self.examples = {k: [] for k in ISSUE_KINDS}

    def record(self, issue, warn=True):
        """Counts an issue unless the same (kind, path, line) was counted
        before; logs new ones of the warning kinds (a few per file and a
        hundred per kind, then says that the rest are only counted).
        Returns True when new."""
        if not isinstance(issue, Issue):
            issue = Issue(*issue)
        key = (issue.kind, issue.path, issue.line)
        message = None
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            self.counts[issue.kind] = self.counts.get(issue.kind, 0) + 1
            ex = self.examples.setdefault(issue.kind, [])
            if len(ex) < self.keep:
                ex.append(_format(issue))
            if warn and ISSUE_KINDS.get(issue.kind, ("", True))[1]:
                per_file = self._shown.get((issue.kind, issue.path), 0) + 1
                per_kind = self._shown.get(issue.kind, 0) + 1
                self._shown[(issue.kind, issue.path)] = per_file
                if per_file <= self.shown_per_file:
                    self._shown[issue.kind] = per_kind
                    if per_kind <= self.shown_per_kind:
                        message = _format(issue)
                    elif per_kind == self.shown_per_kind + 1:
                        message = (f"more problems of kind {issue.kind} are counted but not shown "
                                   f"(latest: {_format(issue)})")
                elif per_file == self.shown_per_file + 1 and per_kind <= self.shown_per_kind:
                    message = f"{issue.path}: more problems of kind {issue.kind} in this file are counted but not shown"
        if message:
            log.warning("%s", message)
        return True

    def record_all(self, issues, warn=True):
        for issue in issues:
            self.record(issue, warn)

    def __getitem__(self, kind):
        return self.counts.get(kind, 0)

    @property
    def total(self):
        """Problems counted, clipped boxes (not a fault) left out."""
        return sum(n for k, n in self.counts.items() if k != "clipped_box")

    def as_dict(self):
        return {k: n for k, n in self.counts.items() if n}

    def report(self):
        """A few lines for a log: each kind seen, its count and meaning."""
        lines = [f"{n:6d}  {k}: {ISSUE_KINDS.get(k, ('', True))[0]}" for k, n in self.counts.items() if n]
        return "\n".join(lines) if lines else "no data problems"

    def __repr__(self):
        return f"DataSummary({self.as_dict()})"
