"""Files written whole or not at all, text files told from binary ones, and
model files told from weights files.

Every file the project writes that a user may already have a good copy of
(weights, checkpoints, training state, model files, result files, charts,
logs) goes through :func:`replacing`: the data is written to a temporary
file in the same folder, which is renamed over the target only once it is
complete, so an interrupted or failed write never leaves a half-written file
and never loses the previous one.

The project's text inputs (cfg, .data, names and list files) are checked with
:func:`not_text` before they are parsed, so a binary or UTF-16 file given in
their place is named as such instead of being read as lines of garbage.

A pydarknet model file opens with :data:`MODEL_MAGIC` (its format is
pydarknet.modelfile's); the weights reader looks for it too, to name a
model file given in place of darknet weights.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Optional

MODEL_MAGIC = b"PDNMODEL"   # the first bytes of a model file (.pdn)


def temporary_path(path, suffix="") -> str:
    """A hidden name beside `path` for its temporary copy (same folder, so
    the rename stays on one file system)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp.{os.getpid()}{suffix}")


@contextmanager
def replacing(path, mode="wb", suffix="", **open_kwargs):
    """Opens a temporary file beside `path` for writing and yields it; on
    leaving the block without an exception it is renamed to `path`,
    otherwise deleted and the exception goes on. Text modes default to UTF-8
    with '\\n' line ends. With mode=None the temporary path itself is yielded
    (for writers that take a file name, such as matplotlib's savefig)."""
    tmp = temporary_path(path, suffix)
    if mode is not None and "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "\n")
    try:
        if mode is None:
            yield tmp
        else:
            with open(tmp, mode, **open_kwargs) as f:
                yield f
        os.replace(tmp, os.fspath(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def not_text(data: bytes) -> Optional[str]:
    """None when `data` can be a text file (UTF-8, ASCII or another 8-bit
    encoding); otherwise why not, to follow the file's name in an error."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "the file is UTF-16 encoded; save it as UTF-8 or ASCII text"
    at = data.find(b"\0")
    if at >= 0:
        return f"not a text file (byte offset {at} is a NUL byte; a binary file?)"
    return None
