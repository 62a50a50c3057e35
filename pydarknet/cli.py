"""The ``pydarknet`` command, shaped after darknet's command line.

    pydarknet detector test <data> <cfg> <weights> [image|list.txt|folder] [-thresh .25] [-ext_output] [-dont_show]
                            [-letter_box] [-i 0] [-out result.json] [-save_labels] [--output-dir DIR]
    pydarknet detector valid <data> <cfg> <weights> [-out name] [-i 0]
    pydarknet detector recall <data> <cfg> <weights> [-i 0]
    pydarknet detector demo <data> <cfg> <weights> [video] [-c 0] [-out_filename out.avi] [-thresh .25]
                            [-ext_output] [-dont_show] [-letter_box] [-prefix p] [-json_file_output f.json]
                            [-time_limit_sec N] [-avgframes 3] [--frames all|latest]
    pydarknet detector train <data> <cfg> [weights] [-clear] [-map] [--map-every N] [-dont_show] [-gpus 0]
                             [-seed 0] [--max-batches N] [--backup DIR] [-thresh .25] [-iou_thresh .5]
    pydarknet detector map <data> <cfg> <weights> [-thresh .25] [-iou_thresh .5] [-points 0|11|101] [-letter_box] [-i 0]
    pydarknet detector calc_anchors <data> [-num_of_clusters 9] [-width 416 -height 416] [-cfg in.cfg [-out_cfg out.cfg]]
    pydarknet detect <cfg> <weights> [image|list.txt|folder] [-thresh .24] [-names file] [-ext_output]
                     [-dont_show] [-letter_box] [-i 0]
    pydarknet classifier train|predict|valid <data> <cfg> [weights] ...   (pydarknet.classifier)
    pydarknet export <cfg> <weights> [-o model.pdn] [-names file]
    pydarknet --cflags --libs [--static]
    pydarknet --version

Flags take darknet's single-dash spelling (``-thresh``) or the double-dash
one (``--thresh``), before, between or after the file arguments. With no
image argument, image paths are read from standard input, one per line,
until end of input. Standard output carries darknet's lines
(``<path>: Predicted in <ms> milli-seconds.``, then ``<name>: <pct>%`` per
detection, sorted by left edge); notes and errors go to standard error.

Exit status: 0 when every image was processed, 1 when a file could not be
used (a missing, malformed or mismatched cfg, data, names, weights or image
file), 2 for a command line that does not parse.

``detector train`` (pydarknet.train, pydarknet.trainer) prints darknet's
log line per iteration, or shows a progress bar when standard error is a
terminal, and writes its checkpoints, a JSON-lines log and a chart to the
backup folder; Ctrl-C saves ``<cfg-name>_last.weights`` (and ``.state``) and
exits with status 130; giving that file back resumes where it stopped.
``detector map`` prints darknet's per-class AP lines, the mAP and
mAP@0.50:0.95 (pydarknet.evaluate). ``detector calc_anchors`` is
pydarknet.anchors.

This module assembles the command line: each command's module adds its
parsers to the top-level subcommands with ``add_parser``, each command with
``set_defaults(func=...)`` (the ``detector`` commands and ``detect``:
pydarknet.detect_cli, ``classifier``: pydarknet.classifier, ``export``:
pydarknet.export; what they share: pydarknet.commands), and :func:`main`
runs the one asked for and turns its errors into one line and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import __version__, classifier, detect_cli, export
from ._native import DarknetError, blas_available, cpu_kernel, tuning_file, version as core_version
from .cfg import CfgError
from .commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, CliError, Parser, UsageError, note, warnings_as_notes
from .datafiles import DataFileError
from .embed import main as print_flags
from .weights import WeightsError


def _version_text():
    tuning = tuning_file()
    tuning = "off" if tuning is None else tuning or "in memory"
    return (f"{PROG} {__version__} (C core {core_version()}, BLAS {'yes' if blas_available() else 'no'}, "
            f"CPU kernel {cpu_kernel()}, measured choices {tuning})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="A Darknet-compatible deep-learning framework.",
                    epilog="pydarknet --cflags --libs [--static]: the flags that build a C program against "
                           "the installed C library")
    parser.add_argument("--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for command in (detect_cli, classifier, export):   # detector and detect, classifier, export
        command.add_parser(commands)
    return parser


# ----------------------------------------------------------------------------- entry point

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--cflags", "--libs"):  # compiler flags for C programs (pydarknet.embed)
        return print_flags(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # -h and --version
            return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_FAILURE)
        with warnings_as_notes():  # the core's warnings and information as notes (a command may route them)
            return args.func(args)
    except UsageError as e:
        note(f"error: {e}")
        return EXIT_USAGE
    except (CliError, CfgError, WeightsError, DataFileError, DarknetError) as e:
        note(f"error: {e}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAILURE
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("PYDARKNET_DEBUG"):
            raise
        note(f"error: internal error: {type(e).__name__}: {e} (set PYDARKNET_DEBUG=1 for a traceback)")
        return EXIT_FAILURE
