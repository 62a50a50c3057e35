"""The detector commands: ``pydarknet detector test``, ``train``, ``map``,
``valid``, ``recall`` and ``demo`` (``calc_anchors`` is pydarknet.anchors's)
and the ``detect`` shortcut, with their parsers, and what they write besides
darknet's lines (pydarknet.commands holds what every command shares).

Formats follow darknet's detector.c:

* ``detector test -out result.json``: a JSON array with one entry per image
  processed, ``{"frame_id": n, "filename": path, "objects": [{"class_id",
  "name", "relative_coordinates": {"center_x", "center_y", "width",
  "height"}, "confidence"}]}``, boxes as fractions of the image;
* ``-save_labels``: beside each image the label file darknet would read for it
  (``replace_image_to_label``), one line ``class x y w h`` (``%d %2.4f ...``)
  per box, its most confident class above the threshold;
* ``detector valid``: with the .data file's ``eval=coco``,
  ``<results>/coco_results.json`` holding COCO detection records
  (``image_id, category_id, bbox [left, top, width, height] in pixels,
  score``); otherwise one file per class, ``<results>/comp4_det_test_<name>.txt``
  with lines ``<image> <score> <xmin> <ymin> <xmax> <ymax>`` in darknet's
  1-based pixels. ``-out`` changes the file name (darknet's outfile);
* ``detector recall``: darknet's per-image line ``i correct total  RPs/Img:
  IOU: Recall:``.

Every file is written whole to a temporary name and renamed into place, so an
interrupted run never leaves a half-written result. Images that cannot be
read are reported on standard error, skipped, and make the exit status 1 once
the rest are done.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from . import anchors
from ._native import DarknetError
from .cfg import HEAD_TYPES, parse_cfg
from .commands import (EXIT_FAILURE, EXIT_OK, IMAGE_EXTS, TRAIN_ERRORS, CliError, Viewer, add_gpu_flag, cache_budget,
                       add_model_files, add_training_flags, display_available, flag, jpeg_quality, load_network,
                       non_negative_int, note, order_data_cfg, port_number, positive_int, read_head, read_image,
                       stdin_paths, threshold, training_watch, warnings_as_notes)
from .data.lists import label_path, label_paths, read_labels, resolve_listed
from .datafiles import load_data_file, read_data_file, read_names, resolve_path
from .detection import Detection, draw_detections
from .evaluate import box_iou, compute_map, detection_classes, map_report
from .fileio import not_text, replacing, temporary_path
from .train import train_detector
from .video import VideoError, VideoSource, is_live_source, open_video_writer

DETECTOR_NMS = 0.45              # detector test's fixed NMS threshold in darknet
PREDICTIONS = "predictions.jpg"  # where darknet writes the annotated image
JPEG_QUALITY = 80                # darknet's save_image quality

VALID_THRESH = 0.001     # darknet's validate_detector: every box above .001 ...
VALID_NMS = 0.6          # ... after NMS at .6
RECALL_THRESH = 0.001    # validate_detector_recall: proposals above .001 objectness,
RECALL_NMS = 0.4         # class-agnostic NMS at .4,
RECALL_IOU = 0.5         # a truth found when a proposal overlaps it by more than .5
LIST_EXTS = (".txt", ".list")

# darknet's COCO category ids of its 80 classes (category ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused)
COCO_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58,
            59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
            89, 90)


# ----------------------------------------------------------------------------- command line

def add_parser(commands):
    """Adds ``detector`` (test, train, map, calc_anchors, valid, recall, demo)
    and the ``detect`` shortcut to the top-level subparsers."""
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
    add_model_files(test, "the .data file (its names= key gives the class names); "
                          "the cfg may come first instead, the two are told apart by content")
    test.add_argument("image", nargs="?", help="image file, list file (.txt, .list) or folder of images; "
                      "without it paths are read from standard input")
    _add_detect_flags(test, 0.25)
    flag(test, "out", metavar="FILE", help="also write the detections of every image to FILE as darknet's JSON")
    flag(test, "save_labels", action="store_true",
         help="write each image's detections as a YOLO label file beside it (<image>.txt)")
    test.add_argument("--output-dir", dest="output_dir", metavar="DIR",
                      help=f"write one annotated image per input to DIR (<name>.jpg) instead of {PREDICTIONS}")
    _add_watch_flags(test, "annotated images")
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
    add_model_files(train, "the .data file (train=, valid=, names=, backup=); the cfg may come first instead, "
                           "the two are told apart by content",
                    weights_help="initial weights, or <backup>/<cfg-name>_last.weights to resume",
                    weights_optional=True)
    flag(train, "clear", action="store_true",
         help="start counting iterations at 0 from the given weights (ignores a .state file)")
    flag(train, "map", dest="calc_map", action="store_true",
         help="compute the mAP on the valid= list every max(100, 4 epochs) iterations (darknet's schedule) "
              "and keep <cfg-name>_best.weights")
    train.add_argument("--map-every", dest="map_every", type=positive_int, metavar="N",
                       help="compute the mAP every N iterations instead (implies -map)")
    flag(train, "mAP_epochs", type=positive_int, default=4, metavar="N",
         help="epochs between mAP computations in darknet's schedule (default 4)")
    flag(train, "thresh", type=threshold, default=0.25, metavar="T",
         help="confidence at which -map counts TP/FP, precision, recall (default .25)")
    flag(train, "iou_thresh", type=threshold, default=0.5, metavar="T",
         help="IoU for a detection to match a truth in -map (default .5)")
    flag(train, "points", type=_map_points, default=0, metavar="N",
         help="AP by area under the curve (0, default), or at 11 or 101 recall points")
    add_training_flags(train, "seed of the batches, augmentation, multi-scale sizes and initial weights (default 0)")
    train.set_defaults(func=_cmd_detector_train)

    dmap = detector_commands.add_parser(
        "map", help="mean average precision on the valid= list",
        description="Detects in every image of the .data file's valid= list (the train= list when there is "
                    "none) and prints darknet's per-class AP, precision, recall, F1, TP, FP, FN and average "
                    "IoU at -thresh, the mAP at -iou_thresh, and the mAP@0.50:0.95 (the mean over IoU .50, "
                    ".55, ..., .95; COCO's with -points 101). Images that cannot be read are reported and "
                    "left out.")
    add_model_files(dmap, "the .data file (valid=, names=); the cfg may come first")
    flag(dmap, "thresh", type=threshold, default=0.25, metavar="T",
         help="confidence at which TP/FP, precision and recall are counted (default .25)")
    flag(dmap, "iou_thresh", type=threshold, default=0.5, metavar="T",
         help="IoU for a detection to match a truth (default .5)")
    flag(dmap, "points", type=_map_points, default=0, metavar="N",
         help="AP by area under the curve (0, default), or at 11 (VOC 2007) or 101 (COCO) recall points")
    flag(dmap, "letter_box", action="store_true",
         help="letterbox the images (default: as the cfg's [net] letter_box says)")
    add_gpu_flag(dmap)
    flag(dmap, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    dmap.set_defaults(func=_cmd_detector_map)
    anchors.add_parser(detector_commands)

    valid = detector_commands.add_parser(
        "valid", help="write the detections on the valid= list to results files",
        description="Detects (threshold .001, NMS .6) in every image of the .data file's valid= list and writes "
                    "the detections to the results= folder (default results/): one "
                    "comp4_det_test_<class>.txt file per class, or coco_results.json when the .data file says "
                    "eval=coco.")
    add_model_files(valid, "the .data file (valid=, names=, results=, eval=)")
    flag(valid, "out", metavar="NAME",
         help="results file name: <NAME><class>.txt, or <NAME>.json with eval=coco")
    add_gpu_flag(valid)
    flag(valid, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    valid.set_defaults(func=detector_valid)

    recall = detector_commands.add_parser(
        "recall", help="recall of the proposals on the valid= list",
        description="darknet's recall check: for each image of the valid= list, the proposals above .001 "
                    "objectness (class-agnostic NMS .4) are matched with the label file's boxes; prints the "
                    "running count of truths found (IoU above .5), proposals per image, mean best IoU and "
                    "recall.")
    add_model_files(recall, "the .data file (valid=)")
    add_gpu_flag(recall)
    flag(recall, "dont_show", action="store_true", help="accepted as darknet accepts it; this command opens no window")
    recall.set_defaults(func=detector_recall)

    demo = detector_commands.add_parser(
        "demo", help="detect in a video file or camera",
        description="Detects in every frame of a video file, or of a camera (-c index) when no video is given. "
                    "Prints each frame's objects on standard output and the frame rate on standard error; writes "
                    "the annotated frames to -out_filename and shows them unless -dont_show. From a camera or "
                    "stream the newest frame is taken each time (frames that arrive meanwhile are dropped) so "
                    "a slow network never falls behind; from a file every frame is processed.")
    add_model_files(demo, "the .data file (names=)")
    demo.add_argument("video", nargs="?", help="video file or stream URL; without it the camera -c is used")
    _add_detect_flags(demo, 0.25)
    flag(demo, "c", type=non_negative_int, default=0, metavar="N", help="camera index (default 0)")
    flag(demo, "out_filename", metavar="FILE", help="write the annotated video to FILE (.avi: Motion JPEG, "
         ".mp4: MPEG-4), at the source's frame rate")
    flag(demo, "prefix", metavar="P", help="write each annotated frame to P_<frame>.jpg")
    flag(demo, "json_file_output", metavar="FILE", help="write each frame's detections to FILE as darknet's JSON")
    flag(demo, "time_limit_sec", type=non_negative_int, default=0, metavar="N",
         help="stop after N seconds (default 0: at the end of the video)")
    flag(demo, "avgframes", type=positive_int, default=3, metavar="N", help="accepted; not used on the CPU")
    _add_watch_flags(demo, "annotated frames")
    demo.add_argument("--frames", choices=("all", "latest"),
                      help="every frame, or only the newest one each time (default: latest for a camera or "
                           "stream URL, all for a file)")
    demo.set_defaults(func=detector_demo)

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
    flag(detect, "names", metavar="FILE", help="class names file, one name per line")
    detect.set_defaults(func=_cmd_detect)
    return detector


def _map_points(text):
    if text not in ("0", "11", "101"):
        raise argparse.ArgumentTypeError(f"expected 0, 11 or 101, got {text!r}")
    return int(text)


def _add_watch_flags(parser, what):
    flag(parser, "mjpeg_port", type=port_number, metavar="P",
         help=f"serve the {what} over HTTP as Motion JPEG (multipart/x-mixed-replace) on port P, to any number "
              "of clients; a slow client skips some, never slows the detector")
    flag(parser, "json_port", type=port_number, metavar="P",
         help="serve the detections over HTTP on port P as darknet does (one growing JSON array of "
              "darknet's JSON records, as -json_file_output / -out write them)")
    parser.add_argument("--mjpeg-quality", type=jpeg_quality, default=80, metavar="Q",
                        help="JPEG quality of the -mjpeg_port images (1..100, default 80)")
    parser.add_argument("--http-host", default="127.0.0.1", metavar="HOST",
                        help="address the ports listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                             "interface)")


def _add_detect_flags(parser, thresh_default):
    flag(parser, "thresh", type=threshold, default=thresh_default, metavar="T",
         help=f"confidence threshold for reported detections (default {thresh_default:g})")
    flag(parser, "ext_output", action="store_true", help="also print each box in pixels")
    flag(parser, "dont_show", action="store_true",
         help="never open a window (without it the result is shown when a display is available)")
    flag(parser, "letter_box", action="store_true",
         help="letterbox the image to the network size (default: as the cfg's [net] letter_box says)")
    add_gpu_flag(parser)


# ----------------------------------------------------------------------------- files and lists

def write_atomic(path, data):
    """Writes text or bytes to `path` through a temporary file renamed into place."""
    path = os.fspath(path)
    try:
        with replacing(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror or e}") from None


def list_paths(list_path) -> List[str]:
    """The image paths of a list file, one per line (blank and ``#`` lines
    skipped). A relative path is taken from the list's folder when it is
    there, else from the working folder; a path in neither is kept as written
    so that processing it reports it missing."""
    try:
        with open(list_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CliError(f"{list_path}: cannot read image list: {e.strerror or e}") from None
    problem = not_text(data)
    if problem:
        raise CliError(f"{list_path}: image list: {problem}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    folder = os.path.dirname(os.fspath(list_path))
    out = []
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(resolve_listed(line, folder) or line)
    return out


def folder_images(folder) -> List[str]:
    """The image files of a folder (by extension), sorted by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise CliError(f"{folder}: cannot list folder: {e.strerror or e}") from None
    return [os.path.join(folder, n) for n in names
            if n.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, n))]


def image_inputs(image) -> Optional[List[str]]:
    """None when `image` names one image; the image paths when it names a
    folder or a list file (.txt or .list)."""
    if os.path.isdir(image):
        paths = folder_images(image)
        if not paths:
            raise CliError(f"{image}: no image files in this folder ({', '.join(IMAGE_EXTS)})")
        return paths
    if image.lower().endswith(LIST_EXTS):
        return listed_images(image)
    return None


def listed_images(list_path) -> List[str]:
    """list_paths, CliError when the list names no image."""
    paths = list_paths(list_path)
    if not paths:
        raise CliError(f"{list_path}: no image paths in this list file")
    return paths


def require_detector(net, cfg_path, command):
    """CliError unless the network ends in a detection head."""
    if any(layer.type in HEAD_TYPES for layer in net.layers):
        return
    last = net.layers[-1].type if net.layers else "nothing"
    kind = " (a classifier: use 'pydarknet classifier')" if last in ("softmax", "cost") else ""
    raise CliError(f"{cfg_path}: no [yolo] or [region] layer, it ends in [{last}]{kind}; "
                   f"'{command}' needs a detection network")


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


def _check_names(net, names, names_path, cfg_path):
    classes = detection_classes(net)
    if names is not None and classes is not None and len(names) != classes:
        note(f"warning: {names_path} has {len(names)} class names but {cfg_path} has classes={classes}; "
             "classes without a name print as their number")


# ----------------------------------------------------------------------------- detector test and detect

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


class TestOutputs:
    """What ``detector test`` writes for each image besides darknet's lines:
    the -out JSON (written at the end), -save_labels files, and one annotated
    image per input in an output folder."""

    def __init__(self, json_path=None, save_labels=False, output_dir=None):
        self.json_path = json_path
        self.save_labels = save_labels
        self.output_dir = output_dir
        self._entries = []
        self._written = set()
        if output_dir is not None:
            try:
                os.makedirs(output_dir, exist_ok=True)
            except OSError as e:
                raise CliError(f"{output_dir}: cannot make the output folder: {e.strerror or e}") from None

    @classmethod
    def from_args(cls, args):
        return cls(getattr(args, "out", None), getattr(args, "save_labels", False),
                   getattr(args, "output_dir", None))

    def add(self, path, image, detections: Sequence[Detection], annotated):
        h, w = image.shape[:2]
        if self.json_path is not None:
            self._entries.append(json_entry(len(self._entries) + 1, path, visible(detections), w, h))
        if self.save_labels:
            write_atomic(label_path(path), "".join(label_lines(detections, w, h)))
        if self.output_dir is not None:
            self._write_annotated(path, annotated)

    def _write_annotated(self, path, annotated):
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = f"{stem}.jpg", 1
        while name in self._written:
            name, n = f"{stem}_{n}.jpg", n + 1
        self._written.add(name)
        ok, buf = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        target = os.path.join(self.output_dir, name)
        if not ok:
            raise CliError(f"{target}: cannot encode the annotated image")
        write_atomic(target, buf.tobytes())

    def close(self):
        """Writes the -out JSON; when no image was processed a file already
        there is left as it was (a failed run never replaces a good result)."""
        if self.json_path is None:
            return
        if not self._entries:
            note(f"no image was processed; {self.json_path} not written")
            return
        write_atomic(self.json_path, json.dumps(self._entries, indent=1) + "\n")
        note(f"detections of {len(self._entries)} images written to {self.json_path}")


def _json_number(v):
    return round(float(v), 6)   # darknet prints %f


def json_entry(frame_id, filename, detections: Sequence[Detection], width, height) -> dict:
    """darknet's JSON record of one image or frame (filename None: a video frame)."""
    entry = {"frame_id": frame_id}
    if filename is not None:
        entry["filename"] = filename
    objects = []
    for d in detections:
        x, y, w, h = d.relative(width, height)
        objects.append({"class_id": d.class_id, "name": d.label,
                        "relative_coordinates": {"center_x": _json_number(x), "center_y": _json_number(y),
                                                 "width": _json_number(w), "height": _json_number(h)},
                        "confidence": _json_number(d.confidence)})
    entry["objects"] = objects
    return entry


def _boxes(detections: Sequence[Detection]) -> Dict[tuple, List[Detection]]:
    """Detections grouped by box (the decoder reports a box once per class)."""
    boxes: Dict[tuple, List[Detection]] = {}
    for d in detections:
        boxes.setdefault((d.x, d.y, d.w, d.h), []).append(d)
    return boxes


def label_lines(detections: Sequence[Detection], width, height) -> List[str]:
    """-save_labels lines: per box its most confident class, YOLO format."""
    lines = []
    for group in _boxes(detections).values():
        best = max(group, key=lambda d: (d.confidence, -d.class_id))
        x, y, w, h = best.relative(width, height)
        lines.append(f"{best.class_id} {x:2.4f} {y:2.4f} {w:2.4f} {h:2.4f}\n")
    return lines


class _WriteError(CliError):
    """The annotated image could not be written: ends a whole run."""


def _detect_image(net, path, args, classes, viewer, outputs, watch=None, index=0):
    """Detects, prints darknet's lines, writes predictions.jpg (or what
    `outputs`, a TestOutputs, asks for). CliError for an image
    that cannot be used."""
    image = read_image(path, net.channels)
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
    if watch is not None:
        watch.publish(annotated, json_entry(index, path, shown, image.shape[1], image.shape[0]))
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
        note(f"annotated image written to {os.path.abspath(PREDICTIONS)}")
    viewer.show(annotated)


def _run_images(net, image, args, watch=None) -> int:
    """One image, or each image of a list file, a folder or standard input
    (those reported and skipped when they cannot be read)."""
    classes = detection_classes(net)
    viewer = Viewer(not args.dont_show)
    outputs = TestOutputs.from_args(args)
    paths = image_inputs(image) if image is not None else stdin_paths()
    failed = 0
    try:
        if paths is None:
            _detect_image(net, image, args, classes, viewer, outputs, watch, 1)
            return EXIT_OK
        for index, path in enumerate(paths, 1):
            try:
                _detect_image(net, path, args, classes, viewer, outputs, watch, index)
            except _WriteError:
                raise
            except CliError as e:
                failed += 1
                note(f"error: {e}")
    finally:
        outputs.close()
    return EXIT_FAILURE if failed else EXIT_OK


def _check_image_arg(image, weights):
    """Fails before the (possibly slow) network build on an image, list or
    folder that cannot be used (with a hint when it and the weights look
    given the other way round)."""
    if image is not None and image_inputs(image) is None:
        try:
            read_image(image)
        except CliError as e:
            if weights.lower().endswith(IMAGE_EXTS):
                raise CliError(f"{e} (the weights file comes before the image: ... {image} {weights})") from None
            raise


def _cmd_detector_test(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg)
    names, names_path = _names_from_data(data_path)
    _check_image_arg(args.image, args.weights)
    watch = _open_watch(args)   # a busy port: one error before the network loads
    try:
        net = load_network(cfg_path, args.weights, names, args.gpu)
        require_detector(net, cfg_path, "detector test")
        _check_names(net, names, names_path, cfg_path)
        return _run_images(net, args.image, args, watch)
    finally:
        if watch is not None:
            watch.close()


def _cmd_detect(args) -> int:
    names_path = args.names
    if names_path is None and os.path.isfile(os.path.join("data", "coco.names")):
        names_path = os.path.join("data", "coco.names")  # darknet's detect uses cfg/coco.data's names
    names = None
    if names_path is not None:
        read_head(names_path, "names", 1)
        names = read_names(names_path)
    _check_image_arg(args.image, args.weights)
    net = load_network(args.cfg, args.weights, names, args.gpu)
    require_detector(net, args.cfg, "detect")
    _check_names(net, names, names_path, args.cfg)
    return _run_images(net, args.image, args)


# ----------------------------------------------------------------------------- train and map

def _cmd_detector_train(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector train")
    try:
        train_detector(cfg_path, data_path, args.weights, clear=args.clear, calc_map=args.calc_map,
                       map_every=args.map_every, map_epochs=args.mAP_epochs, backup=args.backup,
                       max_batches=args.max_batches, seed=args.seed, dont_show=args.dont_show,
                       thresh=args.thresh, iou_thresh=args.iou_thresh, points=args.points, workers=args.workers,
                       gpu=args.gpus, watch=training_watch(args), cache_images=cache_budget(args))
    except KeyboardInterrupt:
        return 130  # _last was saved and the way to resume printed
    except TRAIN_ERRORS as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _cmd_detector_map(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector map")
    names, names_path = _names_from_data(data_path)
    valid = valid_list(data_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # load_network reports the cfg's warnings
        spec = parse_cfg(cfg_path)
    if not any(layer.type in HEAD_TYPES for layer in spec.layers):
        raise CliError(f"{cfg_path}: no [yolo] or [region] layer; 'detector map' needs a detection network "
                       "(a classifier is evaluated with 'classifier valid')")
    net = load_network(cfg_path, args.weights, names, args.gpu)
    _check_names(net, names, names_path, cfg_path)
    classes = detection_classes(net)
    print("\n calculation mAP (mean average precision)...", flush=True)
    try:
        progress = sys.stderr.isatty()
    except (AttributeError, ValueError):
        progress = False
    try:
        with warnings_as_notes():
            run = compute_map(net, valid, classes, thresh=args.thresh, iou_thresh=args.iou_thresh,
                              points=args.points, letterbox=True if args.letter_box else None, progress=progress)
    except TRAIN_ERRORS as e:
        raise CliError(str(e)) from None
    for line in map_report(run, names):
        print(line)
    sys.stdout.flush()
    skipped = f" ({run.skipped} unreadable images left out)" if run.skipped else ""
    note(f"{run.images} images of {valid} in {run.seconds:.1f} seconds{skipped}")
    return EXIT_OK


# ----------------------------------------------------------------------------- running over a list

def valid_list(data_path):
    """The valid= list of a .data file (train= when there is none), checked readable."""
    valid = load_data_file(data_path).valid
    try:
        with open(valid, "rb"):
            pass
    except OSError as e:
        raise CliError(f"{valid}: cannot read the validation image list (valid= in {data_path}, or train= when "
                       f"there is no valid=): {e.strerror or e}") from None
    return valid


class _Readable:
    """(index, path, image) for each path whose image can be read; the
    others are reported on standard error, skipped and kept in `failed`."""

    def __init__(self, paths, channels=3):
        self.paths = paths
        self.channels = channels
        self.failed: List[str] = []

    def __iter__(self):
        for i, path in enumerate(self.paths):
            try:
                image = read_image(path, self.channels)
            except CliError as e:
                self.failed.append(path)
                note(f"error: {e}; skipped")
                continue
            yield i, path, image


def _load_detector(args, command):
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, command)
    names, names_path = _names_from_data(data_path)
    net = load_network(cfg_path, args.weights, names, args.gpu)
    require_detector(net, cfg_path, command)
    _check_names(net, names, names_path, cfg_path)
    return data_path, cfg_path, net, names


def _class_name(names, k):
    return names[k] if names and k < len(names) else str(k)


def _coco_image_id(path, index):
    """darknet's image_id: the number the file name starts with (COCO's
    000000397133.jpg); for names that do not start with digits, the number
    after the last '_' (COCO_val2014_000000397133.jpg, darknet's older rule),
    else the image's place in the list."""
    stem = os.path.splitext(os.path.basename(path))[0]
    digits = _leading_digits(stem)
    if digits:
        return int(digits)
    tail = _leading_digits(stem.rsplit("_", 1)[-1]) if "_" in stem else ""
    return int(tail) if tail else index


def _leading_digits(text):
    n = 0
    while n < len(text) and text[n].isdigit():
        n += 1
    return text[:n]


def coco_category(class_id, classes):
    """COCO's category id of a class: darknet's table for an 80-class
    network; class_id + 1 otherwise (darknet indexes the same table whatever
    the number of classes, which agrees with this for the first 11)."""
    return COCO_IDS[class_id] if classes == len(COCO_IDS) else class_id + 1


def coco_record(image_id, category, d: Detection, width, height) -> str:
    """One COCO result line as darknet prints it: bbox clipped to the image."""
    left, top = max(d.left, 0.0), max(d.top, 0.0)
    right, bottom = min(d.right, float(width)), min(d.bottom, float(height))
    return (f'{{"image_id":{image_id}, "category_id":{category}, "bbox":[{left:f}, {top:f}, '
            f'{right - left:f}, {bottom - top:f}], "score":{d.confidence:f}}}')


def voc_line(image_id: str, d: Detection, width, height) -> str:
    """One line of a per-class results file: darknet's 1-based pixel corners."""
    xmin, ymin = max(d.left + 1, 1.0), max(d.top + 1, 1.0)
    xmax, ymax = min(d.right + 1, float(width)), min(d.bottom + 1, float(height))
    return f"{image_id} {d.confidence:f} {xmin:f} {ymin:f} {xmax:f} {ymax:f}\n"


def detector_valid(args) -> int:
    """darknet's validate_detector (see the module notes). eval= other than
    voc or coco (darknet's imagenet, bdd, kitti) and the map= class remapping
    are not supported and are refused."""
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector valid")
    df = load_data_file(data_path)
    kind = df.get("eval", "voc")
    if kind not in ("voc", "coco"):
        raise CliError(f"{data_path}: eval = {kind} is not supported (voc or coco)")
    if df.get("map") is not None:
        raise CliError(f"{data_path}: map = {df.get('map')} (class remapping) is not supported")
    valid = valid_list(data_path)
    paths = listed_images(valid)
    folder = df.path_of("results", "results")
    _, _, net, names = _load_detector(args, "detector valid")
    classes = detection_classes(net)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CliError(f"{folder}: cannot make the results folder (results= in {data_path}): "
                       f"{e.strerror or e}") from None
    per_class: List[List[str]] = [[] for _ in range(classes)]
    coco: List[str] = []
    images = _Readable(paths, net.channels)
    start = time.perf_counter()
    for i, path, image in images:
        h, w = image.shape[:2]
        detections = net.detect(image, thresh=VALID_THRESH, nms=VALID_NMS)
        if kind == "coco":
            image_id = _coco_image_id(path, i)
            coco.extend(coco_record(image_id, coco_category(d.class_id, classes), d, w, h) for d in detections)
        else:
            stem = os.path.splitext(os.path.basename(path))[0]
            for d in detections:
                per_class[d.class_id].append(voc_line(stem, d, w, h))
        if (i + 1) % 100 == 0:
            note(f"{i + 1} of {len(paths)} images")
    if len(images.failed) == len(paths):
        raise CliError(f"{valid}: none of its {len(paths)} images could be read; no results written")
    if kind == "coco":
        target = os.path.join(folder, f"{args.out or 'coco_results'}.json")
        write_atomic(target, "[\n" + ",\n".join(coco) + ("\n]\n" if coco else "]\n"))
        written = [target]
    else:
        written = []
        for k in range(classes):
            target = os.path.join(folder, f"{args.out or 'comp4_det_test_'}{_class_name(names, k)}.txt")
            write_atomic(target, "".join(per_class[k]))
            written.append(target)
    done = len(paths) - len(images.failed)
    note(f"{done} images of {valid} in {time.perf_counter() - start:.1f} seconds; results in "
         f"{written[0] if len(written) == 1 else folder + '/'}")
    print(f"Total Detection Time: {time.perf_counter() - start:f} Seconds", file=sys.stderr)
    return EXIT_FAILURE if images.failed else EXIT_OK


# ----------------------------------------------------------------------------- recall

def proposals(detections: Sequence[Detection], thresh=RECALL_THRESH, nms=RECALL_NMS) -> np.ndarray:
    """Boxes [n, 4] (x, y, w, h) whose objectness exceeds `thresh`, after
    darknet's class-agnostic NMS by objectness (do_nms_obj). The decoder
    reports boxes whose confidence for some class exceeds its threshold, so a
    box counts here when both its objectness and its best class confidence
    exceed `thresh` (darknet looks at objectness alone)."""
    groups = [g[0] for g in _boxes(detections).values() if g[0].objectness > thresh]
    groups.sort(key=lambda d: -d.objectness)
    boxes = np.array([(d.x, d.y, d.w, d.h) for d in groups], np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    for i in range(len(boxes)):
        if keep[i] and i + 1 < len(boxes):
            later = np.arange(i + 1, len(boxes))
            keep[later[box_iou(boxes[i], boxes[later]) > nms]] = False
    return boxes[keep]


def recall_line(i, correct, total, proposal_count, images, iou_sum) -> str:
    """darknet's validate_detector_recall line after image i."""
    iou = iou_sum * 100 / total if total else 0.0
    recall = 100.0 * correct / total if total else 0.0
    return (f"{i:5d} {correct:5d} {total:5d}\tRPs/Img: {proposal_count / max(images, 1):.2f}\t"
            f"IOU: {iou:.2f}%\tRecall:{recall:.2f}%")


def _truths(path):
    """Truth boxes (class, x, y, w, h) of an image's label file, with the
    problems found noted on standard error."""
    candidates = label_paths(path)
    found = next((p for p in candidates if os.path.exists(p)), candidates[0])
    boxes, issues = read_labels(found)
    for issue in issues:
        if issue.kind != "clipped_box":
            where = issue.path if issue.line is None else f"{issue.path}:{issue.line}"
            note(f"warning: {where}: {issue.message}")
    return boxes


def detector_recall(args) -> int:
    """darknet's validate_detector_recall: images stretched to the network
    size (no letterbox, as darknet), proposals as in :func:`proposals`, and a
    truth counted found when a proposal overlaps it by more than .5. One line
    per image on standard output."""
    data_path, _ = order_data_cfg(args.data, args.cfg, "detector recall")
    valid = valid_list(data_path)
    paths = listed_images(valid)
    _, _, net, _ = _load_detector(args, "detector recall")
    total = correct = proposal_count = done = 0
    iou_sum = 0.0
    images = _Readable(paths, net.channels)
    for i, path, image in images:
        h, w = image.shape[:2]
        boxes = proposals(net.detect(image, thresh=RECALL_THRESH, nms=0, letterbox=False))
        boxes = boxes / np.array([w, h, w, h], np.float64)
        done += 1
        proposal_count += len(boxes)
        for truth in _truths(path):
            total += 1
            best = float(box_iou(truth[1:5].astype(np.float64), boxes).max()) if len(boxes) else 0.0
            iou_sum += best
            correct += best > RECALL_IOU
        print(recall_line(i, correct, total, proposal_count, done, iou_sum), flush=True)
    return EXIT_FAILURE if images.failed else EXIT_OK


# ----------------------------------------------------------------------------- demo

class _JsonFrames:
    """-json_file_output: darknet's JSON records of the frames, streamed to a
    temporary file and renamed into place when the run ends."""

    def __init__(self, path):
        self.path = path
        self.tmp = temporary_path(path)
        try:
            self.f = open(self.tmp, "w", encoding="utf-8", newline="\n")
        except OSError as e:
            raise CliError(f"{path}: cannot write: {e.strerror or e}") from None
        self.f.write("[\n")
        self.count = 0

    def add(self, entry):
        self._write((",\n" if self.count else "") + json.dumps(entry))
        self.count += 1

    def _write(self, text):
        try:
            self.f.write(text)
        except OSError as e:   # a full disk, a size limit: the file there before stays as it was
            self.discard()
            raise CliError(f"{self.path}: cannot write: {e.strerror or e} (a file there before is unchanged)") \
                from None

    def discard(self):
        f, self.f = self.f, None
        try:
            f.close()
        except OSError:
            pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def close(self):
        """Renames the file into place when it holds a frame; without one
        (a video that yields none) a file already there is left as it was."""
        if self.f is None:   # discarded after a failed write
            return
        self._write("\n]\n")
        try:
            self.f.close()
        except OSError as e:
            self.discard()
            raise CliError(f"{self.path}: cannot write: {e.strerror or e} (a file there before is unchanged)") \
                from None
        if self.count:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def _frame_mode(args, source):
    if args.frames is not None:
        return args.frames == "latest"
    return is_live_source(source)


def detector_demo(args) -> int:
    """darknet's demo: detects in each frame of a video file or camera,
    prints the objects of each frame on standard output and the frame rate on
    standard error, and writes the annotated frames to -out_filename, to
    -prefix_NNNNNNNN.jpg files, and/or to a window. -avgframes is accepted
    and not used (darknet's CPU build only delays the frame shown by it)."""
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector demo")
    source = args.video if args.video is not None else args.c
    latest = _frame_mode(args, source)
    try:
        video = VideoSource(source, latest=latest)
    except VideoError as e:
        raise CliError(str(e)) from None
    with video:
        watch = _open_watch(args)   # a busy port: one error before the network loads
        try:
            _, _, net, names = _load_detector(args, "detector demo")
            note(f"{'video file' if args.video is not None else 'webcam index'}: {video.name}"
                 f"{' (latest-frame mode: frames that arrive while one is processed are dropped)' if latest else ''}")
            try:
                return _demo_loop(net, video, args, open_video_writer, watch)
            except VideoError as e:
                raise CliError(str(e)) from None
        finally:
            if watch is not None:
                watch.close()


def _open_watch(args):
    """-mjpeg_port / -json_port: the servers bound and serving, or None without either."""
    if args.mjpeg_port is None and args.json_port is None:
        return None
    from .watch import DetectionWatch, WatchError

    try:
        watch = DetectionWatch(args.mjpeg_port, args.json_port, host=args.http_host, quality=args.mjpeg_quality)
    except WatchError as e:
        raise CliError(str(e)) from None
    for port, what in ((args.mjpeg_port, "annotated images (Motion JPEG)"), (args.json_port, "detections (JSON)")):
        if port is not None:
            note(f"serving the {what} at http://{args.http_host}:{port}/")
    return watch


def _demo_loop(net, video, args, open_video_writer, watch=None) -> int:
    classes = detection_classes(net)
    letterbox = True if args.letter_box else None
    show = not args.dont_show and display_available()
    writer = None
    json_out = _JsonFrames(args.json_file_output) if args.json_file_output else None
    start = last = time.perf_counter()
    fps = 0.0
    count = 0
    try:
        for frame in video:
            count += 1
            detections = visible(net.detect(frame, thresh=args.thresh, nms=DETECTOR_NMS, letterbox=letterbox))
            print("\nObjects:\n")
            for line in format_detections(detections, args.ext_output):
                print(line)
            sys.stdout.flush()
            annotated = draw_detections(frame, detections, classes=classes or 80)
            record = json_entry(count, None, detections, frame.shape[1], frame.shape[0])
            if json_out is not None:
                json_out.add(record)
            if watch is not None:
                watch.publish(annotated, record)
            if args.out_filename:
                if writer is None:
                    writer = open_video_writer(args.out_filename, video.fps, (frame.shape[1], frame.shape[0]))
                    size = (frame.shape[1], frame.shape[0])
                if (annotated.shape[1], annotated.shape[0]) != size:
                    annotated = cv2.resize(annotated, size)
                writer.write(annotated)
            if args.prefix:
                ok, buf = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    write_atomic(f"{args.prefix}_{count:08d}.jpg", buf.tobytes())
            if show:
                show = _show_frame(annotated)
                if show is None:
                    break
            now = time.perf_counter()
            fps = fps * 0.9 + 0.1 / max(now - last, 1e-9) if count > 1 else 1.0 / max(now - last, 1e-9)
            last = now
            print(f"FPS:{fps:.1f} \t AVG_FPS:{count / max(now - start, 1e-9):.1f}", file=sys.stderr, flush=True)
            if args.time_limit_sec and now - start > args.time_limit_sec:
                break
    finally:
        if writer is not None:
            writer.release()
        if json_out is not None:
            json_out.close()
    if count == 0:
        raise CliError(f"{video.name}: no frame could be read")
    seconds = time.perf_counter() - start
    dropped = f", {video.dropped} dropped while busy" if video.latest else ""
    note(f"{count} frames in {seconds:.2f} seconds, {count / max(seconds, 1e-9):.1f} FPS{dropped}")
    if writer is not None:
        note(f"annotated video written to {os.path.abspath(args.out_filename)}")
    return EXIT_OK


def _show_frame(image):
    """Shows a frame; False when no window can be opened (noted once), None
    when Esc was pressed (the run stops), True otherwise."""
    try:
        cv2.imshow("Demo", image)
        key = cv2.waitKey(1)
    except cv2.error as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "OpenCV error"
        note(f"warning: cannot show the video in a window ({reason}); use -dont_show")
        return False
    return None if key == 27 else True
