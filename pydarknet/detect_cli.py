"""The bodies of ``pydarknet detector valid``, ``recall`` and ``demo``, and
what ``detector test`` writes besides darknet's lines (cli.py holds the
parsers and the shared helpers).

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

import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .cli import (DETECTOR_NMS, EXIT_FAILURE, EXIT_OK, JPEG_QUALITY, CliError, _check_names, _display_available,
                  _load_network, _names_from_data, _net_classes, _note, _read_image, format_detections,
                  order_data_cfg, visible)
from .detection import Detection, draw_detections
from .fileio import not_text, replacing, temporary_path

VALID_THRESH = 0.001     # darknet's validate_detector: every box above .001 ...
VALID_NMS = 0.6          # ... after NMS at .6
RECALL_THRESH = 0.001    # validate_detector_recall: proposals above .001 objectness,
RECALL_NMS = 0.4         # class-agnostic NMS at .4,
RECALL_IOU = 0.5         # a truth found when a proposal overlaps it by more than .5
LIST_EXTS = (".txt", ".list")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# darknet's COCO category ids of its 80 classes (category ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused)
COCO_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58,
            59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
            89, 90)


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
    from .data.lists import _resolve

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
            out.append(_resolve(line, folder) or line)
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
    if any(layer.type in ("yolo", "region") for layer in net.layers):
        return
    last = net.layers[-1].type if net.layers else "nothing"
    kind = " (a classifier: use 'pydarknet classifier')" if last in ("softmax", "cost") else ""
    raise CliError(f"{cfg_path}: no [yolo] or [region] layer, it ends in [{last}]{kind}; "
                   f"'{command}' needs a detection network")


def _json_number(v):
    return round(float(v), 6)   # darknet prints %f


# ----------------------------------------------------------------------------- detector test outputs

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
            from .data.lists import label_path

            write_atomic(label_path(path), "".join(label_lines(detections, w, h)))
        if self.output_dir is not None:
            self._write_annotated(path, annotated)

    def _write_annotated(self, path, annotated):
        import cv2

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
            _note(f"no image was processed; {self.json_path} not written")
            return
        write_atomic(self.json_path, json.dumps(self._entries, indent=1) + "\n")
        _note(f"detections of {len(self._entries)} images written to {self.json_path}")


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


# ----------------------------------------------------------------------------- running over a list

def valid_list(data_path):
    """The valid= list of a .data file (train= when there is none), checked readable."""
    from .datafiles import load_data_file

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
                image = _read_image(path, self.channels)
            except CliError as e:
                self.failed.append(path)
                _note(f"error: {e}; skipped")
                continue
            yield i, path, image


def _load_detector(args, command):
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, command)
    names, names_path = _names_from_data(data_path)
    net = _load_network(cfg_path, args.weights, names, args.gpu)
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
    from .datafiles import load_data_file

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
    classes = _net_classes(net)
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
            _note(f"{i + 1} of {len(paths)} images")
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
    _note(f"{done} images of {valid} in {time.perf_counter() - start:.1f} seconds; results in "
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
    from .evaluate import box_iou

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
    from .data.lists import label_paths, read_labels

    candidates = label_paths(path)
    found = next((p for p in candidates if os.path.exists(p)), candidates[0])
    boxes, issues = read_labels(found)
    for issue in issues:
        if issue.kind != "clipped_box":
            where = issue.path if issue.line is None else f"{issue.path}:{issue.line}"
            _note(f"warning: {where}: {issue.message}")
    return boxes


def detector_recall(args) -> int:
    """darknet's validate_detector_recall: images stretched to the network
    size (no letterbox, as darknet), proposals as in :func:`proposals`, and a
    truth counted found when a proposal overlaps it by more than .5. One line
    per image on standard output."""
    from .evaluate import box_iou

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
        self.f.write((",\n" if self.count else "") + json.dumps(entry))
        self.count += 1

    def close(self):
        """Renames the file into place when it holds a frame; without one
        (a video that yields none) a file already there is left as it was."""
        self.f.write("\n]\n")
        self.f.close()
        if self.count:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def _frame_mode(args, source):
    from .video import is_live_source

    if args.frames is not None:
        return args.frames == "latest"
    return is_live_source(source)


def detector_demo(args) -> int:
    """darknet's demo: detects in each frame of a video file or camera,
    prints the objects of each frame on standard output and the frame rate on
    standard error, and writes the annotated frames to -out_filename, to
    -prefix_NNNNNNNN.jpg files, and/or to a window. -avgframes is accepted
    and not used (darknet's CPU build only delays the frame shown by it)."""
    from .video import VideoError, VideoSource, open_video_writer

    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "detector demo")
    source = args.video if args.video is not None else args.c
    latest = _frame_mode(args, source)
    try:
        video = VideoSource(source, latest=latest)
    except VideoError as e:
        raise CliError(str(e)) from None
    with video:
        _, _, net, names = _load_detector(args, "detector demo")
        _note(f"{'video file' if args.video is not None else 'webcam index'}: {video.name}"
              f"{' (latest-frame mode: frames that arrive while one is processed are dropped)' if latest else ''}")
        try:
            return _demo_loop(net, video, args, open_video_writer)
        except VideoError as e:
            raise CliError(str(e)) from None


def _demo_loop(net, video, args, open_video_writer) -> int:
    import cv2

    classes = _net_classes(net)
    letterbox = True if args.letter_box else None
    show = not args.dont_show and _display_available()
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
            if json_out is not None:
                json_out.add(json_entry(count, None, detections, frame.shape[1], frame.shape[0]))
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
    _note(f"{count} frames in {seconds:.2f} seconds, {count / max(seconds, 1e-9):.1f} FPS{dropped}")
    if writer is not None:
        _note(f"annotated video written to {os.path.abspath(args.out_filename)}")
    return EXIT_OK


def _show_frame(image):
    """Shows a frame; False when no window can be opened (noted once), None
    when Esc was pressed (the run stops), True otherwise."""
    import cv2

    try:
        cv2.imshow("Demo", image)
        key = cv2.waitKey(1)
    except cv2.error as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "OpenCV error"
        _note(f"warning: cannot show the video in a window ({reason}); use -dont_show")
        return False
    return None if key == 27 else True
