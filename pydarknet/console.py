"""What the commands and training print besides their results: darknet's
lines go to standard output, pydarknet's notes (``pydarknet: ...``) to
standard error, both above a progress bar when there is one; and, while
asked, the ``pydarknet`` logger's warnings (data problems) and information
as notes."""
from __future__ import annotations

import contextlib
import logging
import sys

__all__ = ["PROG", "note", "Output", "warnings_as_notes"]

PROG = "pydarknet"   # the command's name, and the prefix of its notes

_logger = logging.getLogger("pydarknet")


def note(message):
    """'pydarknet: <message>' on standard error, after what standard output holds."""
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class Output:
    """darknet's lines to standard output (or `log_fn`), notes to standard
    error; both above the progress bar `bar` when there is one."""

    def __init__(self, log_fn=None):
        self.log_fn = log_fn
        self.bar = None

    def line(self, text):
        if self.log_fn is not None:
            self.log_fn(text)
        elif self.bar is not None:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def note(self, text):
        if self.bar is not None:
            sys.stdout.flush()
            self.bar.write(f"{PROG}: {text}", file=sys.stderr)
        else:
            note(text)


class _NoteHandler(logging.Handler):
    """Sends the pydarknet logger's warnings (data problems) to the notes, and
    its information (the core measuring its algorithms on a first run, which
    takes a while) as notes of their own."""

    def __init__(self, out):
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record):
        try:
            self.out.note(f"warning: {record.getMessage()}" if record.levelno >= logging.WARNING
                          else record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def warnings_as_notes(out=None):
    """While inside, the pydarknet logger's warnings (data problems) print as
    'pydarknet: warning: ...' lines on standard error (through `out`, an
    Output, when given), unless the program has set up logging itself."""
    out = out or Output()
    outer = next((h for h in _logger.handlers if isinstance(h, _NoteHandler)), None)
    if outer is not None:  # inside another one (the command's): its notes go through `out` meanwhile
        before, outer.out = outer.out, out
        try:
            yield out
        finally:
            outer.out = before
        return
    handler, level = None, _logger.level
    if not _logger.hasHandlers():
        handler = _NoteHandler(out)
        _logger.addHandler(handler)
        if _logger.getEffectiveLevel() > logging.INFO:
            _logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        if handler is not None:
            _logger.removeHandler(handler)
            _logger.setLevel(level)
