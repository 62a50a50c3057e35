"""Files written whole or not at all.

Every file the project writes that a user may already have a good copy of
(weights, checkpoints, training state, model files, result files, charts,
logs) goes through :func:`replacing`: the data is written to a temporary
file in the same folder, which is renamed over the target only once it is
complete, so an interrupted or failed write never leaves a half-written file
and never loses the previous one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager


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
