"""Training sets as darknet finds them: image lists, label files, images.

* An image list has one path per line. Surrounding whitespace, blank lines,
  Windows line ends and ``#`` comment lines are tolerated (darknet would take
  a comment for a path). A relative path is looked up in the list's folder
  first, then in the working folder (darknet's only place). Paths that exist
  in neither are reported (file and line) and left out.
* The label file of an image is found as darknet's ``replace_image_to_label``
  finds it: ``/images/train2017/`` -> ``/labels/train2017/`` (and val2017,
  train2014, val2014, both slash styles), ``/JPEGImages/`` -> ``/labels/``,
  and the image extension replaced by ``.txt``. Darknet's older rule (the
  last ``images`` or ``raw`` folder of the path -> ``labels``) is tried when
  that file does not exist, so both ``obj/x.jpg + obj/x.txt`` and
  ``images/train/x.jpg + labels/train/x.txt`` layouts work.
* A label line is ``class x y w h`` with the box centre and size as fractions
  of the image. Lines that are not five numbers, class ids outside
  0..classes-1, boxes of zero size, boxes entirely outside the image and boxes
  centred exactly at 0,0 (darknet rejects those) are reported with file and
  line and skipped; the rest of the file is still read (darknet's fscanf loop
  stops at the first bad line). Boxes partly outside the image are clipped to
  it. A missing label file means no objects, as in darknet, and is reported.
* Images are decoded with OpenCV (BGR, 8 bit; 16-bit and alpha images are
  converted as darknet's ``imread(..., IMREAD_COLOR)`` does). A missing or
  undecodable image is reported once and skipped; the sampler draws another.
"""
from __future__ import annotations

import math
import os

import cv2
import numpy as np

from ..datafiles import DataFileError, load_data_file, read_names
from ..fileio import not_text
from .issues import DataError, DataSummary, Issue, printable

__all__ = [
    "read_image_list", "resolve_listed", "label_path", "label_paths", "read_labels", "read_image",
    "DetectionDataset", "ClassificationDataset", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tiff", ".tif", ".webp", ".pgm", ".pbm")

# darknet's replace_image_to_label, in its order (each replaces the first occurrence)
_DARKNET_FOLDERS = (
    ("/images/train2017/", "/labels/train2017/"), ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"), ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"), ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"), ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)


def resolve_listed(value, folder):
    """A path as a list file in `folder` writes it: absolute, or relative and
    then the folder's if it exists there, else the working folder's; None
    when it does not exist."""
    if os.path.isabs(value):
        return value if os.path.exists(value) else None
    if folder:
        alt = os.path.join(folder, value)
        if os.path.exists(alt):
            return alt
    return value if os.path.exists(value) else None


def read_image_list(path, summary=None, check=True):
    """The image paths of a list file, resolved (see the module notes).
    Missing images are recorded in `summary` (a DataSummary) and left out.
    With check=False paths are resolved without looking at the disk."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read image list: {e.strerror}") from None
    problem = not_text(data)
    if problem:
        raise DataFileError(f"{path}: image list: {problem}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", "surrogateescape")
    folder = os.path.dirname(path)
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not check:
            out.append(line if os.path.isabs(line) or not folder else os.path.join(folder, line))
            continue
        found = resolve_listed(line, folder)
        if found is None:
            where = f" (looked in {folder or '.'} and the working folder)" if not os.path.isabs(line) else ""
            if summary is not None:
                summary.record(Issue("missing_image", path, n, f"image {printable(line)} not found{where}; left out"))
            continue
        out.append(found)
    return out


def label_path(image_path):
    """darknet's replace_image_to_label: the label file of an image."""
    p = os.fspath(image_path)
    for old, new in _DARKNET_FOLDERS:
        p = p.replace(old, new, 1)
    p = p.strip(" \t")
    return _to_txt(p)


def _to_txt(p):
    stem, ext = os.path.splitext(p)
    if ext.lower() == ".txt":
        return p
    return (stem if ext else p) + ".txt"


def label_paths(image_path):
    """Candidate label files, darknet's first, then the last ``images`` or
    ``raw`` folder of the path replaced by ``labels`` (and JPEGImages
    anywhere), darknet's older rule."""
    first = label_path(image_path)
    p = os.fspath(image_path).replace("\\", "/")
    parts = p.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "raw", "JPEGImages"):
            parts[i] = "labels"
            break
    second = _to_txt("/".join(parts).strip(" \t"))
    return [first] if second == first else [first, second]


def _parse_int(tok):
    try:
        return int(tok)
    except ValueError:
        v = float(tok)   # "3.0" is accepted as 3; "3.5" is not a class id
        if not v.is_integer():
            raise
        return int(v)


def read_labels(path, classes=None):
    """The boxes of a YOLO label file as float32 [n, 5] rows (class, x, y, w,
    h), checked and clipped (see the module notes), and the issues found.
    A missing file gives no boxes and a "missing_label" issue."""
    path = os.fspath(path)
    issues = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32), [Issue("missing_label", path, None,
                                                    "label file not found; image has no objects")]
    except OSError as e:
        return np.zeros((0, 5), np.float32), [Issue("missing_label", path, None,
                                                    f"cannot read label file ({e.strerror}); no objects")]
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows = []
    for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        try:
            if len(toks) != 5:
                raise ValueError
            cls = _parse_int(toks[0])
            x, y, w, h = (float(t) for t in toks[1:])
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                raise ValueError
        except ValueError:
            issues.append(Issue("malformed_line", path, n, f"expected 'class x y w h', got {line[:80]!r}"))
            continue
        if cls < 0 or (classes is not None and cls >= classes):
            top = f"0..{classes - 1}" if classes is not None else "0 or more"
            issues.append(Issue("bad_class", path, n, f"class id {cls} is outside {top}"))
            continue
        if w <= 0 or h <= 0:
            issues.append(Issue("zero_size_box", path, n, f"box of size {w:g} x {h:g}"))
            continue
        left, right, top_, bot = x - w / 2, x + w / 2, y - h / 2, y + h / 2
        if (x == 0 and y == 0) or right <= 0 or bot <= 0 or left >= 1 or top_ >= 1:
            issues.append(Issue("box_outside", path, n, f"box ({x:g}, {y:g}, {w:g}, {h:g}) is outside the image"))
            continue
        if left < 0 or top_ < 0 or right > 1 or bot > 1:
            issues.append(Issue("clipped_box", path, n, f"box ({x:g}, {y:g}, {w:g}, {h:g}) clipped to the image"))
            left, right = max(left, 0.0), min(right, 1.0)
            top_, bot = max(top_, 0.0), min(bot, 1.0)
            x, y, w, h = (left + right) / 2, (top_ + bot) / 2, right - left, bot - top_
        rows.append((cls, x, y, w, h))
    return np.array(rows, np.float32).reshape(-1, 5), issues


def imread(path, channels=3):
    """The image file as darknet's load_image reads it (OpenCV's imread,
    colour BGR or grey for channels=1), or None when OpenCV cannot decode it
    (a corrupt header can make it raise rather than return None: a BMP
    claiming a height past its limits)."""
    try:
        img = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if img is None or img.size == 0 else img


def read_image(path, channels=3):
    """An image as OpenCV decodes it: BGR uint8 [H, W, 3] (or [H, W] for
    channels=1), or None with an issue when it is missing or corrupt."""
    img = imread(path, channels)
    if img is None:
        if not os.path.exists(path):
            return None, Issue("missing_image", path, None, "image file not found; left out")
        return None, Issue("corrupt_image", path, None, "cannot decode image; left out")
    return img, None


class _Dataset:
    """Image paths plus what the workers need to read them; picklable (its
    caches are not carried to other processes)."""

    def __init__(self, images, channels=3, origin=""):
        self.images = list(images)
        self.channels = 1 if channels == 1 else 3
        self.origin = origin   # the list or .data file, for messages
        self.summary = DataSummary()
        self._bad = set()
        self.image_cache = None   # an ImageCache (pydarknet.data.cache) while a loader keeps decoded images

    def __len__(self):
        return len(self.images)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bad"] = set()
        state["summary"] = None
        for key in [k for k in state if k.startswith("_cache")]:
            state[key] = {}
        return state

    def image(self, index):
        """(BGR uint8 image or None, issues)."""
        path = self.images[index]
        if index in self._bad:
            return None, []
        cache = self.image_cache
        if cache is not None:
            img = cache.get(index)   # read-only: the augmentations make new images
            if img is not None:
                return img, []
        img, issue = read_image(path, self.channels)
        if img is None:
            self._bad.add(index)
            return None, [issue]
        if cache is not None:
            cache.put(index, img)
        return img, []


class DetectionDataset(_Dataset):
    """Images with YOLO label files."""

    def __init__(self, images, classes, channels=3, origin=""):
        super().__init__(images, channels, origin)
        self.classes = int(classes)
        self._cache_labels = {}

    @classmethod
    def from_list(cls, list_path, classes, channels=3, check=True):
        summary = DataSummary()
        images = read_image_list(list_path, summary, check)
        if not images:
            raise DataError(f"{list_path}: no usable image paths")
        ds = cls(images, classes, channels, os.fspath(list_path))
        ds.summary = summary
        return ds

    @classmethod
    def from_data(cls, data_path, key="train", channels=3, classes=None, check=True):
        """The list that a .data file's `key` (train or valid) names; classes
        from its classes= unless given."""
        df = load_data_file(data_path)
        list_path = df.valid if key == "valid" else df.path_of(key)
        if list_path is None:
            raise DataFileError(f"{data_path}: no '{key} = <image list>' entry")
        ds = cls.from_list(list_path, df.classes if classes is None else classes, channels, check)
        ds.data_file = df
        return ds

    def label_file(self, index):
        cands = label_paths(self.images[index])
        for c in cands:
            if os.path.exists(c):
                return c
        return cands[0]

    def labels(self, index):
        """(float32 [n, 5] rows class x y w h, issues); cached per image."""
        hit = self._cache_labels.get(index)
        if hit is not None:
            return hit, []
        boxes, issues = read_labels(self.label_file(index), self.classes)
        self._cache_labels[index] = boxes
        return boxes, issues

    def load(self, index):
        """(image or None, labels, issues)."""
        img, issues = self.image(index)
        if img is None:
            return None, None, issues
        boxes, more = self.labels(index)
        return img, boxes, issues + more


class ClassificationDataset(_Dataset):
    """Images whose class is the class name found in their path (darknet's
    fill_truth: every name that is a substring of the path counts). `names`
    is darknet's labels= list. Paths naming no class are reported and left
    out; paths naming several classes are reported and get every match, as in
    darknet."""

    def __init__(self, images, names, channels=3, origin=""):
        super().__init__(images, channels, origin)
        self.names = list(names)
        if not self.names:
            raise DataError(f"{origin or 'classifier dataset'}: no class names")
        self._cache_match = {}

    @property
    def classes(self):
        return len(self.names)

    @classmethod
    def from_list(cls, list_path, names, channels=3, check=True):
        summary = DataSummary()
        images = read_image_list(list_path, summary, check)
        if not images:
            raise DataError(f"{list_path}: no usable image paths")
        if isinstance(names, (str, os.PathLike)):
            names = read_names(names)
        ds = cls(images, names, channels, os.fspath(list_path))
        ds.summary = summary
        return ds

    @classmethod
    def from_data(cls, data_path, key="train", channels=3, check=True):
        """labels= (darknet's classifier key; names= when labels= is
        missing) gives the class names."""
        df = load_data_file(data_path)
        names_key = "labels" if "labels" in df.options or "names" not in df.options else "names"
        names = read_names(df.path_of(names_key))
        list_path = df.valid if key == "valid" else df.path_of(key)
        ds = cls.from_list(list_path, names, channels, check)
        ds.data_file = df
        return ds

    def classes_of(self, index):
        """(class indices the path names, issues)."""
        hit = self._cache_match.get(index)
        if hit is not None:
            return hit, []
        path = self.images[index]
        found = [k for k, name in enumerate(self.names) if name and name in path]
        issues = []
        if len(found) != 1:
            what = "names no class" if not found else \
                f"names {len(found)} classes ({', '.join(self.names[k] for k in found[:5])})"
            issues.append(Issue("class_match", path, None, what + ("; left out" if not found else "")))
        self._cache_match[index] = found
        return found, issues

    def load(self, index):
        """(image or None, class indices, issues)."""
        found, issues = self.classes_of(index)
        if not found:
            return None, None, issues
        img, more = self.image(index)
        return img, found, issues + more
