"""What the ``pydarknet`` commands share: their errors and exit status, the
parser class and darknet's flags, the reading of their files (data and cfg
in either order, the network with its weights, images, paths on standard
input), notes on standard error and the result window.

The commands themselves are in pydarknet.detect_cli (``detector`` and
``detect``), pydarknet.anchors (``detector calc_anchors``),
pydarknet.classifier (``classifier``) and pydarknet.export (``export``);
pydarknet.cli assembles them into the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Iterator, Optional, Tuple

import cv2

from ._native import DarknetError
from .console import PROG, note, warnings_as_notes
from .data.issues import DataError
from .data.lists import imread
from .evaluate import EvaluationError
from .network import load
from .state import StateError
from .train_checks import TrainError
from .weights import WeightsError

__all__ = [
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "IMAGE_EXTS", "CliError", "UsageError", "TRAIN_ERRORS",
    "Parser", "flag", "threshold", "positive_int", "non_negative_int", "seed_int", "port_number", "jpeg_quality",
    "add_gpu_flag",
    "add_model_files", "add_training_flags", "training_watch",
    "read_head", "order_data_cfg", "emit_warnings", "load_network", "read_image", "stdin_paths",
    "PROG", "note", "warnings_as_notes", "display_available", "Viewer",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# file names that look like images (the folders' images, and hints for arguments given the other way round)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class CliError(Exception):
    """A failure to report on one line (exit status 1)."""


class UsageError(Exception):
    """A command line that does not make sense (exit status 2)."""


# the exceptions of training and mAP that become one error line
TRAIN_ERRORS = (TrainError, StateError, DataError, EvaluationError)


# ----------------------------------------------------------------------------- parser

class Parser(argparse.ArgumentParser):
    """argparse with errors raised (cli.main reports them on one line) and,
    for parsers marked `intermixed`, flags allowed between the file
    arguments as darknet allows (``... yolov4.weights -ext_output dog.jpg``).
    Subcommand parsers are of the class of the parser they are added to."""

    intermixed = False
    _inside = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog[len(PROG):].strip()
        hint = f"{self.prog} -h"
        raise UsageError(f"{command}: {message} (see '{hint}')" if command else f"{message} (see '{hint}')")

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed or self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False
        if extras:  # named here, where the command is known
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def flag(parser, name, **kwargs):
    """A darknet flag, spelled -name or --name."""
    kwargs.setdefault("dest", name)
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)


def threshold(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


INT_MAX = 2**31 - 1       # numeric flags reach the C core as a C int
SEED_MAX = 2**32 - 1      # seeds reach it as an unsigned integer


def _whole_number(text, least, most=INT_MAX):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")
    if value > most:
        raise argparse.ArgumentTypeError(f"expected a whole number of at most {most}, got {text!r}")
    return value


def positive_int(text):
    return _whole_number(text, 1)


def port_number(text):
    """A TCP port, 1..65535."""
    return _whole_number(text, 1, 65535)


def jpeg_quality(text):
    """A JPEG quality, 1..100."""
    return _whole_number(text, 1, 100)


def non_negative_int(text):
    return _whole_number(text, 0)


def seed_int(text):
    return _whole_number(text, 0, SEED_MAX)


def gpu_list(text):
    """darknet's -gpus list of CUDA devices, e.g. 0,1,2,3."""
    return tuple(non_negative_int(part.strip()) for part in text.split(","))


def add_gpu_flag(parser):
    flag(parser, "i", dest="gpu", type=non_negative_int, metavar="N",
         help="run on CUDA device N (a build with PYDARKNET_CUDA=1; default: the CPU)")


def add_model_files(parser, data_help, cfg_help="the network's .cfg file", weights_help="the .weights file",
                    weights_optional=False):
    """darknet's <data> <cfg> <weights> arguments (data and cfg in either
    order, told apart by content; flags allowed between them)."""
    parser.intermixed = True
    parser.add_argument("data", metavar="data", help=data_help)
    parser.add_argument("cfg", metavar="cfg", help=cfg_help)
    parser.add_argument("weights", metavar="weights", nargs="?" if weights_optional else None, help=weights_help)


def add_training_flags(parser, seed_help):
    """The flags detector and classifier training share."""
    flag(parser, "dont_show", action="store_true", help="accepted; training never opens a window")
    flag(parser, "gpus", type=gpu_list, metavar="LIST",
         help="CUDA devices, e.g. 0,1 (a build with PYDARKNET_CUDA=1; default: the CPU): one process trains on "
              "the first; under mpiexec the ranks on a machine take the devices in turn (local rank)")
    flag(parser, "seed", type=seed_int, default=0, metavar="N", help=seed_help)
    parser.add_argument("--max-batches", dest="max_batches", type=positive_int, metavar="N",
                        help="train up to iteration N instead of the cfg's max_batches")
    parser.add_argument("--backup", metavar="DIR", help="checkpoint folder instead of the .data file's backup=")
    parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                        help="background workers making batches (default 2 on the CPU, on a GPU one per core but "
                             "two; 0: in the training thread): threads up to 2, processes writing into "
                             "shared memory beyond, which scale with the cores")
    parser.add_argument("--cache-images", dest="cache_images", type=cache_size, nargs="?", const="auto",
                        default=None, metavar="GB",
                        help="keep the decoded training images in shared memory for the run, so that each is "
                             "decoded once and not once an epoch (the same pixels): at most GB gigabytes, default "
                             "half the memory available; images beyond it are decoded each time")
    flag(parser, "mjpeg_port", type=port_number, metavar="P",
         help="serve a live training page on port P (http://HOST:P/: loss, average loss, learning rate and mAP "
              "curves from the log, images/s, time left, the latest augmented training images with their boxes) "
              "and the chart as Motion JPEG at /chart.mjpg")
    parser.add_argument("--http-host", default="127.0.0.1", metavar="HOST",
                        help="address -mjpeg_port listens on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                             "interface)")


def cache_size(text):
    """--cache-images GB: a positive number of gigabytes, or 'auto'."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of gigabytes, got {text!r}")
    return value


def cache_budget(args):
    """train_network's `cache_images` from --cache-images: None, True (the default budget) or bytes."""
    value = getattr(args, "cache_images", None)
    return None if value is None else True if value == "auto" else int(value * 1e9)


def training_watch(args):
    """train_network's `watch` from the training flags: (port, host), or None."""
    return None if getattr(args, "mjpeg_port", None) is None else (args.mjpeg_port, args.http_host)


# ----------------------------------------------------------------------------- files

def _cannot_open(path, what, error: OSError) -> CliError:
    return CliError(f"{path}: cannot open {what} file: {error.strerror or error}")


def read_head(path, what, size=65536) -> bytes:
    """The first bytes of a file, or CliError naming it when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise _cannot_open(path, what, e) from None


def _first_line_kind(head: bytes) -> Optional[str]:
    """'cfg' when the first meaningful line opens a [section], 'data' when it
    is key = value, None when neither."""
    if head.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        head = head[3:]
    for raw in head.decode("latin-1").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            return "cfg"
        return "data" if "=" in line else None
    return None


def order_data_cfg(first: str, second: str, command: str = "detector test") -> Tuple[str, str]:
    """(data, cfg) from the two file arguments of a detector command, in
    darknet's order (data, cfg) or the other way round, told apart by content
    (a cfg opens with a [section]; a .data file holds key = value lines) and
    then by extension."""
    heads, failure = [], None
    for path in (first, second):
        try:
            with open(path, "rb") as f:
                heads.append(f.read(65536))
        except OSError as e:
            heads.append(None)
            failure = failure or (path, e)
    if failure:
        # name the unreadable file by its place, unless the other one's content says otherwise
        path, error = failure
        role, other = ("data", heads[1]) if path == first else ("cfg", heads[0])
        if other is not None and _first_line_kind(other) == role:
            role = "cfg" if role == "data" else "data"
        raise _cannot_open(path, role, error)
    kinds = (_first_line_kind(heads[0]), _first_line_kind(heads[1]))
    if kinds == ("data", "data"):
        raise UsageError(f"{command}: {first} and {second} both look like .data files (key = value lines); "
                         f"expected a .data file and a .cfg file")
    if kinds == ("cfg", "cfg"):
        raise UsageError(f"{command}: {first} and {second} both look like cfg files (they open with a "
                         f"[section]); expected a .data file and a .cfg file")
    if kinds[0] == "cfg" or (kinds[1] != "cfg" and first.lower().endswith(".cfg")
                             and not second.lower().endswith(".cfg")):
        return second, first
    return first, second


# ----------------------------------------------------------------------------- the network

def emit_warnings(caught):
    """Each caught warning as a note."""
    for w in caught:
        note(f"warning: {w.message}")


def load_network(cfg_path, weights_path, names, gpu=None):
    """The network with its weights; errors name the file (and line or byte offset)."""
    read_head(cfg_path, "cfg", 1)
    read_head(weights_path, "weights", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net = load(cfg_path, weights_path, names=names)
        except WeightsError as e:
            msg = str(e)
            if weights_path.lower().endswith(IMAGE_EXTS):
                msg += " (this looks like an image; the weights file comes before the image)"
            raise CliError(msg) from None
        finally:
            emit_warnings(caught)
    if gpu is not None:
        try:
            net.set_device(gpu)
        except DarknetError as e:
            raise CliError(f"-i {gpu}: {e}") from None
        note(f"running on {net.device_name}")
    return net


# ----------------------------------------------------------------------------- images

def read_image(path, channels=3):
    """The image at `path` as darknet's load_image reads it for a network of
    `channels` channels: BGR, or grey (IMREAD_GRAYSCALE) for one channel."""
    if not os.path.exists(path):
        raise CliError(f"{path}: cannot open image file: No such file or directory")
    if os.path.isdir(path):
        raise CliError(f"{path}: cannot open image file: Is a directory")
    read_head(path, "image", 1)
    image = imread(path, channels)
    if image is None:
        raise CliError(f"{path}: cannot decode image (not an image format OpenCV reads, or corrupt)")
    return image


def stdin_paths() -> Iterator[str]:
    """Image paths from standard input, one per line, until end of input; a
    prompt as darknet's when a person is typing."""
    stream = sys.stdin
    if stream is None:
        return
    try:
        interactive = stream.isatty()
    except (ValueError, OSError):
        return
    while True:
        if interactive:
            print("Enter Image Path: ", end="", flush=True)
        try:
            line = stream.readline()
        except (ValueError, OSError):
            return
        if not line:
            return
        path = line.strip()
        if path:
            yield path


# ----------------------------------------------------------------------------- windows

def display_available():
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Viewer:
    """Shows each result in a window until a key is pressed, as darknet does,
    when allowed and possible; a failure to open a window is noted once."""

    def __init__(self, enabled):
        self.enabled = enabled and display_available()

    def show(self, image):
        if not self.enabled:
            return
        try:
            cv2.imshow("predictions", image)
            cv2.waitKey(0)
            cv2.destroyAllWindows()
        except cv2.error as e:
            self.enabled = False
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "OpenCV error"
            note(f"warning: cannot show the result in a window ({reason}); use -dont_show")
