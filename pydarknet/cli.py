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

``detector train`` (pydarknet.train) prints darknet's log line per
iteration, or shows a progress bar when standard error is a terminal, and
writes its checkpoints, a JSON-lines log and a chart to the backup folder;
Ctrl-C saves ``<cfg-name>_last.weights`` (and ``.state``) and exits with
status 130; giving that file back resumes where it stopped. ``detector map``
prints darknet's per-class AP lines, the mAP and mAP@0.50:0.95
(pydarknet.evaluate). ``detector calc_anchors`` is pydarknet.anchors;
``detector valid``, ``recall`` and ``demo`` are in pydarknet.detect_cli
(their output formats are described there).

The parser is built from subcommands (``detector test``); each command's
parser is added in :func:`build_parser` (or by its module's ``add_parser``)
with ``set_defaults(func=...)``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, anchors
from ._native import DarknetError, blas_available, version as core_version
from .cfg import CfgError
from .datafiles import DataFileError, read_data_file, read_names, resolve_path
from .detection import Detection, draw_detections
from .network import load
from .weights import WeightsError

PROG = "pydarknet"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

DETECTOR_NMS = 0.45              # detector test's fixed NMS threshold in darknet
PREDICTIONS = "predictions.jpg"  # where darknet writes the annotated image
JPEG_QUALITY = 80                # darknet's save_image quality
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class CliError(Exception):
    """A failure to report on one line (exit status 1)."""


class UsageError(Exception):
    """A command line that does not make sense (exit status 2)."""


# ----------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with errors raised (main reports them on one line) and, for
    parsers marked `intermixed`, flags allowed between the file arguments as
    darknet allows (``... yolov4.weights -ext_output dog.jpg``)."""

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


def _flag(parser, name, **kwargs):
    """A darknet flag, spelled -name or --name."""
    kwargs.setdefault("dest", name)
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)


def _threshold(text):
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


def _positive_int(text):
    return _whole_number(text, 1)


def _non_negative_int(text):
    return _whole_number(text, 0)


def _seed(text):
    return _whole_number(text, 0, SEED_MAX)


def _map_points(text):
    if text not in ("0", "11", "101"):
        raise argparse.ArgumentTypeError(f"expected 0, 11 or 101, got {text!r}")
    return int(text)


def _add_detect_flags(parser, thresh_default):
    _flag(parser, "thresh", type=_threshold, default=thresh_default, metavar="T",
          help=f"confidence threshold for reported detections (default {thresh_default:g})")
    _flag(parser, "ext_output", action="store_true", help="also print each box in pixels")
    _flag(parser, "dont_show", action="store_true",
          help="never open a window (without it the result is shown when a display is available)")
    _flag(parser, "letter_box", action="store_true",
          help="letterbox the image to the network size (default: as the cfg's [net] letter_box says)")
    _add_gpu_flag(parser)


def _add_gpu_flag(parser):
    _flag(parser, "i", dest="gpu", type=_non_negative_int, metavar="N",
          help="run on CUDA device N (a build with PYDARKNET_CUDA=1; default: the CPU)")


def _add_model_files(parser, data_help, cfg_help="the network's .cfg file", weights_help="the .weights file",
                     weights_optional=False):
    """darknet's <data> <cfg> <weights> arguments (data and cfg in either
    order, told apart by content; flags allowed between them)."""
    parser.intermixed = True
    parser.add_argument("data", metavar="data", help=data_help)
    parser.add_argument("cfg", metavar="cfg", help=cfg_help)
    parser.add_argument("weights", metavar="weights", nargs="?" if weights_optional else None, help=weights_help)


def _add_training_flags(parser, seed_help):
    """The flags detector and classifier training share."""
    _flag(parser, "dont_show", action="store_true", help="accepted; training never opens a window")
    _flag(parser, "gpus", type=_first_gpu, metavar="LIST",
          help="train on the first CUDA device of the list (a build with PYDARKNET_CUDA=1; default: the CPU)")
    _flag(parser, "seed", type=_seed, default=0, metavar="N", help=seed_help)
    parser.add_argument("--max-batches", dest="max_batches", type=_positive_int, metavar="N",
                        help="train up to iteration N instead of the cfg's max_batches")
    parser.add_argument("--backup", metavar="DIR", help="checkpoint folder instead of the .data file's backup=")
    parser.add_argument("--workers", type=_non_negative_int, default=2, metavar="N",
                        help="background threads making batches (default 2; 0: in the training thread)")


def _first_gpu(text):
    """darknet's -gpus list: training uses its first device."""
    return _non_negative_int(text.split(",")[0].strip())


def _version_text():
    return f"{PROG} {__version__} (C core {core_version()}, BLAS {'yes' if blas_available() else 'no'})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A Darknet-compatible deep-learning framework.",
                     epilog="pydarknet --cflags --libs [--static]: the flags that build a C program against "
                            "the installed C library")
    parser.add_argument("--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    detector = commands.add_parser(
        "detector", help="object detectors: test, train, map, valid, recall, demo, calc_anchors",
        description="Object detection with a .data file, a cfg and weights (darknet's 'detector').")
    detector_commands = detector.add_subparsers(dest="subcommand", metavar="<subcommand>", required=True)

    test = detector_commands.add_parser(
        "test", help="detect objects in images",
        description="Detects objects in one image, or in each image whose path is read from standard "
                    "input (one per line) when no image is given, or in each image of a list file (.txt, "
                    ".list) or a folder. Prints darknet's result lines and writes the annotated image to "
                    f"{PREDICTIONS} in the current folder (or each one to --output-dir). An image that cannot "
                    "be read is reported and skipped; the exit status is then 1.")
    _add_model_files(test, "the .data file (its names= key gives the class names); "
                           "the cfg may come first instead, the two are told apart by content")
    test.add_argument("image", nargs="?", help="image file, list file (.txt, .list) or folder of images; "
                      "without it paths are read from standard input")
    _add_detect_flags(test, 0.25)
    _flag(test, "out", metavar="FILE", help="also write the detections of every image to FILE as darknet's JSON")
    _flag(test, "save_labels", action="store_true",
          help="write each image's detections as a YOLO label file beside it (<image>.txt)")
    test.add_argument("--output-dir", dest="output_dir", metavar="DIR",
                      help=f"write one annotated image per input to DIR (<name>.jpg) instead of {PREDICTIONS}")
    test.set_defaults(func=_cmd_detector_test)

    train = detector_commands.add_parser(
        "train", help="train a detector",
        description="Trains the cfg's network on the train= list of the .data file, from the weights when "
                    "given (a full file, a partial one such as yolov4-tiny.conv.29, or a checkpoint to resume "
                    "from), up to the cfg's max_batches. Checkpoints go to the backup folder (the .data "
                    "file's backup=): <cfg-name>_last.weights and .state every 100 iterations (savelast=), "
                    "_<N>.weights every 1000 (saveweights=) and at the cfg's steps, _final.weights at the "
                    "end, _best.weights with -map; also <cfg-name>_train.jsonl (one JSON line per iteration) "
                    "and chart_<cfg-name>.png. Ctrl-C saves _last; giving _last.weights back resumes with the "
                    "same batches and ends with the same weights as a run never stopped.")
    _add_model_files(train, "the .data file (train=, valid=, names=, backup=); the cfg may come first instead, "
                            "the two are told apart by content",
                     weights_help="initial weights, or <backup>/<cfg-name>_last.weights to resume",
                     weights_optional=True)
    _flag(train, "clear", action="store_true",
          help="start counting iterations at 0 from the given weights (ignores a .state file)")
    _flag(train, "map", dest="calc_map", action="store_true",
          help="compute the mAP on the valid= list every max(100, 4 epochs) iterations (darknet's schedule) "
               "and keep <cfg-name>_best.weights")
    train.add_argument("--map-every", dest="map_every", type=_positive_int, metavar="N",
                       help="compute the mAP every N iterations instead (implies -map)")
    _flag(train, "mAP_epochs", type=_positive_int, default=4, metavar="N",
          help="epochs between mAP computations in darknet's schedule (default 4)")
    _flag(train, "thresh", type=_threshold, default=0.25, metavar="T",
          help="confidence at which -map counts TP/FP, precision, recall (default .25)")
    _flag(train, "iou_thresh", type=_threshold, default=0.5, metavar="T",
          help="IoU for a detection to match a truth in -map (default .5)")
    _flag(train, "points", type=_map_points, default=0, metavar="N",
          help="AP by area under the curve (0, default), or at 11 or 101 recall points")
    _add_training_flags(train, "seed of the batches, augmentation, multi-scale sizes and initial weights (default 0)")
    train.set_defaults(func=_cmd_detector_train)

    dmap = detector_commands.add_parser(
        "map", help="mean average precision on the valid= list",
        description="Detects in every image of the .data file's valid= list (the train= list when there is "
                    "none) and prints darknet's per-class AP, precision, recall, F1, TP, FP, FN and average "
                    "IoU at -thresh, the mAP at -iou_thresh, and the mAP@0.50:0.95 (the mean over IoU .50, "
                    ".55, ..., .95; COCO's with -points 101). Images that cannot be read are reported and "
                    "left out.")
    _add_model_files(dmap, "the .data file (valid=, names=); the cfg may come first")
    _flag(dmap, "thresh", type=_threshold, default=0.25, metavar="T",
          help="confidence at which TP/FP, precision and recall are counted (default .25)")
    _flag(dmap, "iou_thresh", type=_threshold, default=0.5, metavar="T",
          help="IoU for a detection to match a truth (default .5)")
    _flag(dmap, "points", type=_map_points, default=0, metavar="N",
          help="AP by area under the curve (0, default), or at 11 (VOC 2007) or 101 (COCO) recall points")
    _flag(dmap, "letter_box", action="store_true",
          help="letterbox the images (default: as the cfg's [net] letter_box says)")
    _add_gpu_flag(dmap)
    _flag(dmap, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    dmap.set_defaults(func=_cmd_detector_map)
    anchors.add_parser(detector_commands)

    valid = detector_commands.add_parser(
        "valid", help="write the detections on the valid= list to results files",
        description="Detects (threshold .001, NMS .6) in every image of the .data file's valid= list and writes "
                    "the detections to the results= folder (default results/): one "
                    "comp4_det_test_<class>.txt file per class, or coco_results.json when the .data file says "
                    "eval=coco.")
    _add_model_files(valid, "the .data file (valid=, names=, results=, eval=)")
    _flag(valid, "out", metavar="NAME",
          help="results file name: <NAME><class>.txt, or <NAME>.json with eval=coco")
    _add_gpu_flag(valid)
    _flag(valid, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    valid.set_defaults(func=_cmd_detector_valid)

    recall = detector_commands.add_parser(
        "recall", help="recall of the proposals on the valid= list",
        description="darknet's recall check: for each image of the valid= list, the proposals above .001 "
                    "objectness (class-agnostic NMS .4) are matched with the label file's boxes; prints the "
                    "running count of truths found (IoU above .5), proposals per image, mean best IoU and "
                    "recall.")
    _add_model_files(recall, "the .data file (valid=)")
    _add_gpu_flag(recall)
    _flag(recall, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    recall.set_defaults(func=_cmd_detector_recall)

    demo = detector_commands.add_parser(
        "demo", help="detect in a video file or camera",
        description="Detects in every frame of a video file, or of a camera (-c index) when no video is given. "
                    "Prints each frame's objects on standard output and the frame rate on standard error; writes "
                    "the annotated frames to -out_filename and shows them unless -dont_show. From a camera or "
                    "stream the newest frame is taken each time (frames that arrive meanwhile are dropped) so "
                    "a slow network never falls behind; from a file every frame is processed.")
    _add_model_files(demo, "the .data file (names=)")
    demo.add_argument("video", nargs="?", help="video file or stream URL; without it the camera -c is used")
    _add_detect_flags(demo, 0.25)
    _flag(demo, "c", type=_non_negative_int, default=0, metavar="N", help="camera index (default 0)")
    _flag(demo, "out_filename", metavar="FILE", help="write the annotated video to FILE (.avi: Motion JPEG, "
          ".mp4: MPEG-4), at the source's frame rate")
    _flag(demo, "prefix", metavar="P", help="write each annotated frame to P_<frame>.jpg")
    _flag(demo, "json_file_output", metavar="FILE", help="write each frame's detections to FILE as darknet's JSON")
    _flag(demo, "time_limit_sec", type=_non_negative_int, default=0, metavar="N",
          help="stop after N seconds (default 0: at the end of the video)")
    _flag(demo, "avgframes", type=_positive_int, default=3, metavar="N", help="accepted; not used on the CPU")
    demo.add_argument("--frames", choices=("all", "latest"),
                      help="every frame, or only the newest one each time (default: latest for a camera or "
                           "stream URL, all for a file)")
    demo.set_defaults(func=_cmd_detector_demo)

    detect = commands.add_parser(
        "detect", help="detect objects in images (shortcut without a .data file)",
        description="darknet's 'detect' shortcut: 'detector test' without a .data file. Class names come "
                    "from -names, else data/coco.names in the current folder when it exists, else class "
                    "numbers are printed.")
    detect.intermixed = True
    detect.add_argument("cfg", help="the network's .cfg file")
    detect.add_argument("weights", help="the .weights file")
    detect.add_argument("image", nargs="?", help="image file, list file (.txt, .list) or folder of images; "
                        "without it paths are read from standard input")
    _add_detect_flags(detect, 0.24)
    _flag(detect, "names", metavar="FILE", help="class names file, one name per line")
    detect.set_defaults(func=_cmd_detect)

    from .classifier import add_classifier_parser

    add_classifier_parser(commands)

    from .export import add_parser as add_export

    add_export(commands)
    return parser


# ----------------------------------------------------------------------------- files

def _cannot_open(path, what, error: OSError) -> "CliError":
    return CliError(f"{path}: cannot open {what} file: {error.strerror or error}")


def _read_head(path, what, size=65536) -> bytes:
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


def _names_from_data(data_path) -> Tuple[List[str], str]:
    options = read_data_file(data_path)
    value = options.get("names")
    if value is None:
        value = "data/names.list"  # darknet's default
        if not os.path.exists(value):
            raise CliError(f"{data_path}: no 'names = <file>' entry giving the class names file")
    names_path = resolve_path(value, data_path)
    try:
        with open(names_path, "rb"):
            pass
    except OSError as e:
        raise CliError(f"{names_path}: cannot open names file (names= in {data_path}): {e.strerror or e}") from None
    return read_names(names_path), names_path


def _emit_warnings(caught):
    for w in caught:
        _note(f"warning: {w.message}")


def _load_network(cfg_path, weights_path, names, gpu=None):
    """The network with its weights; errors name the file (and line or byte offset)."""
    _read_head(cfg_path, "cfg", 1)
    _read_head(weights_path, "weights", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net = load(cfg_path, weights_path, names=names)
        except WeightsError as e:
            msg = str(e)
            if weights_path.lower().endswith(_IMAGE_EXTS):
                msg += " (this looks like an image; the weights file comes before the image)"
            raise CliError(msg) from None
        finally:
            _emit_warnings(caught)
    if gpu is not None:
        try:
            net.set_device(gpu)
        except DarknetError as e:
            raise CliError(f"-i {gpu}: {e}") from None
        _note(f"running on {net.device_name}")
    return net


def _net_classes(net) -> Optional[int]:
    for layer in reversed(net.output_layers):
        if layer.spec is not None and "classes" in layer.spec.attrs:
            return int(layer.spec.attrs["classes"])
    return None


def _check_names(net, names, names_path, cfg_path):
    classes = _net_classes(net)
    if names is not None and classes is not None and len(names) != classes:
        _note(f"warning: {names_path} has {len(names)} class names but {cfg_path} has classes={classes}; "
              "classes without a name print as their number")


# ----------------------------------------------------------------------------- output

def _note(message):
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _c_round(v: float) -> float:
    """C's round(): halves away from zero, the sign (also of zero) kept."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def _percent(confidence: float) -> float:
    # darknet multiplies the float probability by 100 in single precision
    return float(np.float32(confidence) * np.float32(100))


def visible(detections: Iterable[Detection]) -> List[Detection]:
    """Detections darknet reports: classes named 'dont_show...' are hidden."""
    return [d for d in detections if not (d.name or "").startswith("dont_show")]


def format_detections(detections: Sequence[Detection], ext_output=False) -> List[str]:
    """darknet's result lines: one box at a time from the left edge rightwards,
    its most confident class first, then its other classes above threshold."""
    boxes = {}
    for d in detections:
        boxes.setdefault((d.x, d.y, d.w, d.h), []).append(d)
    lines = []
    for group in sorted(boxes.values(), key=lambda g: g[0].left):
        best = max(group, key=lambda d: d.confidence)
        for d in [best] + sorted((d for d in group if d is not best), key=lambda d: d.class_id):
            line = f"{d.label}: {_percent(d.confidence):.0f}%"
            if ext_output:
                line += ("\t(left_x: {:4.0f}   top_y: {:4.0f}   width: {:4.0f}   height: {:4.0f})".format(
                    *(_c_round(v) for v in (d.left, d.top, d.w, d.h))))
            lines.append(line)
    return lines


def _display_available():
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Viewer:
    """Shows each result in a window until a key is pressed, as darknet does,
    when allowed and possible; a failure to open a window is noted once."""

    def __init__(self, enabled):
        self.enabled = enabled and _display_available()

    def show(self, image):
        if not self.enabled:
            return
        import cv2

        try:
            cv2.imshow("predictions", image)
            cv2.waitKey(0)
            cv2.destroyAllWindows()
        except cv2.error as e:
            self.enabled = False
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "OpenCV error"
            _note(f"warning: cannot show the result in a window ({reason}); use -dont_show")


# ----------------------------------------------------------------------------- running

def _read_image(path, channels=3):
    """The image at `path` as darknet's load_image reads it for a network of
    `channels` channels: BGR, or grey (IMREAD_GRAYSCALE) for one channel."""
    import cv2

    if not os.path.exists(path):
        raise CliError(f"{path}: cannot open image file: No such file or directory")
    if os.path.isdir(path):
        raise CliError(f"{path}: cannot open image file: Is a directory")
    _read_head(path, "image", 1)
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"{path}: cannot decode image (not an image format OpenCV reads, or corrupt)")
    return image


def _stdin_paths() -> Iterator[str]:
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


class _WriteError(CliError):
    """The annotated image could not be written: ends a whole run."""


def _detect_image(net, path, args, classes, viewer, outputs):
    """Detects, prints darknet's lines, writes predictions.jpg (or what
    `outputs`, a detect_cli.TestOutputs, asks for). CliError for an image
    that cannot be used."""
    import cv2

    image = _read_image(path, net.channels)
    start = time.perf_counter()
    try:
        detections = net.detect(image, thresh=args.thresh, nms=DETECTOR_NMS,
                                letterbox=True if args.letter_box else None)
    except (DarknetError, ValueError) as e:
        raise CliError(f"{path}: {e}") from None
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    shown = visible(detections)
    print(f"{path}: Predicted in {elapsed_ms:f} milli-seconds.")
    for line in format_detections(shown, args.ext_output):
        print(line)
    sys.stdout.flush()
    annotated = draw_detections(image, shown, classes=classes or 80)
    try:
        outputs.add(path, image, detections, annotated)
    except CliError as e:
        raise _WriteError(str(e)) from None
    if outputs.output_dir is None:
        try:
            ok = cv2.imwrite(PREDICTIONS, annotated, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        except cv2.error:
            ok = False
        if not ok:
            raise _WriteError(f"{os.path.abspath(PREDICTIONS)}: cannot write the annotated image")
        _note(f"annotated image written to {os.path.abspath(PREDICTIONS)}")
    viewer.show(annotated)


def _run_images(net, image, args) -> int:
    """One image, or each image of a list file, a folder or standard input
    (those reported and skipped when they cannot be read)."""
    from .detect_cli import TestOutputs, image_inputs

    classes = _net_classes(net)
    viewer = _Viewer(not args.dont_show)
    outputs = TestOutputs.from_args(args)
    paths = image_inputs(image) if image is not None else _stdin_paths()
    failed = 0
    try:
        if paths is None:
            _detect_image(net, image, args, classes, viewer, outputs)
            return EXIT_OK
        for path in paths:
            try:
                _detect_image(net, path, args, classes, viewer, outputs)
            except _WriteError:
                raise
            except CliError as e:
                failed += 1
                _note(f"error: {e}")
    finally:
        outputs.close()
    return EXIT_FAILURE if failed else EXIT_OK


def _check_image_arg(image, weights):
    """Fails before the (possibly slow) network build on an image, list or
    folder that cannot be used (with a hint when it and the weights look
    given the other way round)."""
    if image is not None:
        from .detect_cli import image_inputs

        if image_inputs(image) is None:
            try:
                _read_image(image)
            except CliError as e:
                if weights.lower().endswith(_IMAGE_EXTS):
                    raise CliError(f"{e} (the weights file comes before the image: ... {image} {weights})") \
                        from None
                raise


def _cmd_detector_test(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg)
    names, names_path = _names_from_data(data_path)
    _check_image_arg(args.image, args.weights)
    net = _load_network(cfg_path, args.weights, names, args.gpu)
    _require_detector(net, cfg_path, "detector test")
    _check_names(net, names, names_path, cfg_path)
    return _run_images(net, args.image, args)


def _cmd_detect(args) -> int:
    names_path = args.names
    if names_path is None and os.path.isfile(os.path.join("data", "coco.names")):
        names_path = os.path.join("data", "coco.names")  # darknet's detect uses cfg/coco.data's names
    names = None
    if names_path is not None:
        _read_head(names_path, "names", 1)
        names = read_names(names_path)
    _check_image_arg(args.image, args.weights)
    net = _load_network(args.cfg, args.weights, names, args.gpu)
    _require_detector(net, args.cfg, "detect")
    _check_names(net, names, names_path, args.cfg)
    return _run_images(net, args.image, args)


def _require_detector(net, cfg_path, command):
    from .detect_cli import require_detector

    require_detector(net, cfg_path, command)


def _cmd_detector_valid(args) -> int:
    from .detect_cli import detector_valid

    return detector_valid(args)


def _cmd_detector_recall(args) -> int:
    from .detect_cli import detector_recall

    return detector_recall(args)


def _cmd_detector_demo(args) -> int:
    from .detect_cli import detector_demo

    return detector_demo(args)


def _train_errors():
    """The exceptions of training and mAP that become one error line."""
    from .data.issues import DataError
    from .evaluate import EvaluationError
    from .state import StateError
    from .train import TrainError

    return (TrainError, StateError, DataError, EvaluationError)


def _cmd_detector_train(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector train")
    from .train import train_detector

    try:
        train_detector(cfg_path, data_path, args.weights, clear=args.clear, calc_map=args.calc_map,
                       map_every=args.map_every, map_epochs=args.mAP_epochs, backup=args.backup,
                       max_batches=args.max_batches, seed=args.seed, dont_show=args.dont_show,
                       thresh=args.thresh, iou_thresh=args.iou_thresh, points=args.points, workers=args.workers,
                       gpu=args.gpus)
    except KeyboardInterrupt:
        return 130  # _last was saved and the way to resume printed
    except _train_errors() as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _cmd_detector_map(args) -> int:
    from .cfg import parse_cfg
    from .detect_cli import valid_list
    from .evaluate import compute_map, map_report
    from .train import DETECTION_LAYERS, warnings_as_notes

    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector map")
    names, names_path = _names_from_data(data_path)
    valid = valid_list(data_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # _load_network reports the cfg's warnings
        spec = parse_cfg(cfg_path)
    if not any(layer.type in DETECTION_LAYERS for layer in spec.layers):
        raise CliError(f"{cfg_path}: no [yolo] or [region] layer; 'detector map' needs a detection network "
                       "(a classifier is evaluated with 'classifier valid')")
    net = _load_network(cfg_path, args.weights, names, args.gpu)
    _check_names(net, names, names_path, cfg_path)
    classes = _net_classes(net)
    print("\n calculation mAP (mean average precision)...", flush=True)
    try:
        progress = sys.stderr.isatty()
    except (AttributeError, ValueError):
        progress = False
    try:
        with warnings_as_notes():
            run = compute_map(net, valid, classes, thresh=args.thresh, iou_thresh=args.iou_thresh,
                              points=args.points, letterbox=True if args.letter_box else None, progress=progress)
    except _train_errors() as e:
        raise CliError(str(e)) from None
    for line in map_report(run, names):
        print(line)
    sys.stdout.flush()
    skipped = f" ({run.skipped} unreadable images left out)" if run.skipped else ""
    _note(f"{run.images} images of {valid} in {run.seconds:.1f} seconds{skipped}")
    return EXIT_OK


# ----------------------------------------------------------------------------- entry point

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--cflags", "--libs"):  # compiler flags for C programs (pydarknet.embed)
        from .embed import main as print_flags

        return print_flags(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # -h and --version
            return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_FAILURE)
        return args.func(args)
    except UsageError as e:
        _note(f"error: {e}")
        return EXIT_USAGE
    except (CliError, CfgError, WeightsError, DataFileError, DarknetError) as e:
        _note(f"error: {e}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _note("interrupted")
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
        _note(f"error: internal error: {type(e).__name__}: {e} (set PYDARKNET_DEBUG=1 for a traceback)")
        return EXIT_FAILURE
