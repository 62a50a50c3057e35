"""Small detection datasets of synthetic shapes written to disk in darknet's
layout (images and labels side by side, list files, a .data and a .names
file), for tests, demos, benchmarks and the bundled training example.

* :func:`write_shapes_dataset`: shapes on plain backgrounds, one list.
* :func:`make_shapes_dataset`: shapes drawn over random crops of real photos,
  with a training and a held-out validation split, made deterministically
  from a seed (what ``scripts/make_dataset.py`` writes).
* :func:`make_shapes_classification`: one shape per small image, its class
  in its file name, for darknet's classifier (``cfg/shapes-classifier.cfg``).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from ..synthetic import SHAPES, draw_shape, draw_shapes

__all__ = ["write_shapes_dataset", "make_shapes_dataset", "make_shapes_classification", "shapes_on_photo",
           "default_backgrounds", "BACKGROUNDS", "SHAPES"]


def write_shapes_dataset(folder, count=16, width=320, height=240, per_image=(1, 4), seed=0, ext=".jpg",
                         quality=95):
    """Writes `count` images of width x height with 1..4 shapes each to
    folder/images/, their YOLO labels beside them (darknet's layout), and
    folder/train.txt, folder/shapes.names, folder/shapes.data (relative
    paths). Returns the .data file's path."""
    folder = os.fspath(folder)
    img_dir = os.path.join(folder, "obj")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = max(width, height)
    lines = []
    for i in range(count):
        img, labels = draw_shapes(side, int(rng.integers(per_image[0], per_image[1] + 1)), rng)
        if (width, height) != (side, side):
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        name = f"shape_{i:04d}{ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext.lower() in (".jpg", ".jpeg") else []
        cv2.imwrite(os.path.join(img_dir, name), img, params)
        with open(os.path.join(img_dir, f"shape_{i:04d}.txt"), "w") as f:
            for c, x, y, w, h in labels:
                f.write(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n")
        lines.append(f"obj/{name}")
    with open(os.path.join(folder, "train.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "shapes.names"), "w") as f:
        f.write("\n".join(SHAPES) + "\n")
    data = os.path.join(folder, "shapes.data")
    with open(data, "w") as f:
        f.write(f"classes = {len(SHAPES)}\ntrain = train.txt\nvalid = train.txt\nnames = shapes.names\n"
                f"backup = backup/\n")
    return data


# ----------------------------------------------------------------------------- shapes over photos

# darknet's public sample photos, shipped in the project's data/ folder
BACKGROUNDS = ("dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "person.jpg")


def default_backgrounds(folder=None):
    """The paths of BACKGROUNDS in `folder` (default: the data/ folder of
    the source checkout this module is in)."""
    if folder is None:
        folder = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")
    return [os.path.join(os.fspath(folder), name) for name in BACKGROUNDS]


def _read_photos(backgrounds):
    photos = []
    for path in backgrounds:
        img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{path}: cannot read background photo (missing or not an image)")
        photos.append(img)
    if not photos:
        raise FileNotFoundError("no background photos given")
    return photos


def _background(photos, rng, width, height, min_crop=0.25):
    """A random crop of a random photo (side min_crop..1 of what fits,
    width:height aspect), mirrored half of the time, resized to width x height."""
    src = photos[int(rng.integers(len(photos)))]
    ph, pw = src.shape[:2]
    fit = min(pw / width, ph / height)          # largest crop of the output's aspect
    scale = fit * float(rng.uniform(min_crop, 1.0))
    cw, ch = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    img = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
    if rng.integers(2):
        img = np.ascontiguousarray(img[:, ::-1])
    return img


def _contrasting_color(rng, patch, min_distance=160, tries=16):
    """A random BGR colour whose summed channel distance to the patch's
    mean colour is at least min_distance (the farthest of `tries` if none is)."""
    mean = patch.reshape(-1, 3).mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(tries):
        color = rng.integers(0, 256, 3)
        d = float(np.abs(color - mean).sum())
        if d >= min_distance:
            return tuple(int(c) for c in color)
        if d > best_d:
            best, best_d = color, d
    return tuple(int(c) for c in best)


def shapes_on_photo(photos, rng, width=128, height=128, per_image=(1, 4), min_size=0.12, max_size=0.40,
                    margin=2, min_crop=0.25):
    """One BGR uint8 image: a random crop of one of `photos` (BGR arrays;
    min_crop..1 of the largest crop that fits) with 1..4 non-overlapping
    filled shapes (SHAPES) of sizes min_size..max_size of the shorter side,
    each in a colour that stands out from the photo under it. Returns
    (image, labels float32 [n, 5] rows class x y w h)."""
    img = _background(photos, rng, width, height, min_crop)
    side = min(width, height)
    lo = max(2, int(round(min_size * side / 2)))
    hi = max(lo, int(round(max_size * side / 2)))
    count = int(rng.integers(per_image[0], per_image[1] + 1))
    placed, labels = [], []
    for _ in range(count * 30):
        if len(labels) == count:
            break
        r = int(rng.integers(lo, hi + 1))
        if 2 * r + 1 > side:
            continue
        cx = int(rng.integers(r, width - r))
        cy = int(rng.integers(r, height - r))
        if any(abs(cx - x) < r + q + margin and abs(cy - y) < r + q + margin for x, y, q in placed):
            continue
        k = int(rng.integers(len(SHAPES)))
        color = _contrasting_color(rng, img[cy - r:cy + r + 1, cx - r:cx + r + 1])
        draw_shape(img, SHAPES[k], cx, cy, r, color)
        placed.append((cx, cy, r))
        labels.append((k, cx / width, cy / height, (2 * r + 1) / width, (2 * r + 1) / height))
    return img, np.array(labels, np.float32).reshape(-1, 5)


_SPLITS = {"train": 0, "valid": 1, "sample": 2}   # one generator per split


def _split_rng(seed, split):
    return np.random.default_rng([int(seed), 0x5A9E5, _SPLITS[split]])


def _write_image(path, img, labels, quality):
    """The image and its YOLO label file beside it (same name, .txt)."""
    if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise OSError(f"{path}: cannot write image")
    with open(os.path.splitext(path)[0] + ".txt", "w") as f:
        f.writelines(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)


def _write_split(folder, split, count, photos, seed, width, height, per_image, quality):
    rng = _split_rng(seed, split)
    sub = os.path.join(folder, "images", split)
    os.makedirs(sub, exist_ok=True)
    lines = []
    for i in range(count):
        img, labels = shapes_on_photo(photos, rng, width, height, per_image)
        stem = f"{split}_{i:05d}"
        _write_image(os.path.join(sub, stem + ".jpg"), img, labels, quality)
        lines.append(f"images/{split}/{stem}.jpg")
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def make_shapes_dataset(folder, train=2000, valid=200, width=128, height=128, seed=0, backgrounds=None,
                        per_image=(1, 4), quality=90, sample=(512, 512)):
    """Writes a detection dataset of shapes drawn over crops of real photos:

        folder/images/train/train_00000.jpg + train_00000.txt (YOLO labels beside the image,
                                             where darknet's replace_image_to_label looks)
        folder/images/valid/valid_00000.jpg + .txt
        folder/train.txt, folder/valid.txt   (image paths relative to folder)
        folder/shapes.names                  (square, circle, triangle)
        folder/shapes.data                   (classes, train, valid, names, backup; relative paths)
        folder/sample.jpg + sample.txt       (a larger picture, `sample` = (width, height), of 3 or 4
                                             shapes in the same proportions, to try a trained
                                             network on; None leaves it out)

    The training, validation and sample images come from three generators
    seeded from `seed`, so they differ, and the same seed gives the same
    bytes. `backgrounds`: photo paths (default: BACKGROUNDS in the project's
    data/ folder).
    Returns the .data file's path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    photos = _read_photos(default_backgrounds() if backgrounds is None else backgrounds)
    _write_split(folder, "train", int(train), photos, seed, int(width), int(height), per_image, quality)
    _write_split(folder, "valid", int(valid), photos, seed, int(width), int(height), per_image, quality)
    if sample:
        img, labels = shapes_on_photo(photos, _split_rng(seed, "sample"), int(sample[0]), int(sample[1]), (3, 4),
                                      min_crop=0.6)
        _write_image(os.path.join(folder, "sample.jpg"), img, labels, 95)
    with open(os.path.join(folder, "shapes.names"), "w") as f:
        f.write("\n".join(SHAPES) + "\n")
    os.makedirs(os.path.join(folder, "backup"), exist_ok=True)
    data = os.path.join(folder, "shapes.data")
    with open(data, "w") as f:
        f.write(f"classes = {len(SHAPES)}\ntrain = train.txt\nvalid = valid.txt\nnames = shapes.names\n"
                f"backup = backup/\n")
    return data


# ----------------------------------------------------------------------------- classification

def make_shapes_classification(folder, train=300, valid=60, size=32, seed=0):
    """Writes a classification dataset in darknet's layout, one filled shape
    (square, circle or triangle, radius size/6..2*size/5, a bright colour)
    on a plain dark background per size x size PNG image, its class in its
    name, which is how darknet's classifier finds it:

        folder/train/square_00012.png ...   folder/valid/circle_00003.png ...
        folder/train.txt, folder/valid.txt  (image paths relative to folder)
        folder/labels.txt                   (square, circle, triangle)
        folder/shapes.data                  (classes, train, valid, labels, backup, top = 5)

    The splits come from two generators seeded from `seed`; the same seed
    gives the same bytes. Returns the .data file's path. (The class names
    must not occur in `folder` itself: darknet takes every name found in an
    image's path.)"""
    folder = os.fspath(folder)
    size = int(size)
    for split, count in (("train", int(train)), ("valid", int(valid))):
        rng = _split_rng(seed, split)
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        lines = []
        for i in range(count):
            img, labels = draw_shapes(size, 1, rng, min_r=max(2, size // 6), max_r=max(3, 2 * size // 5))
            name = f"{split}/{SHAPES[int(labels[0, 0])]}_{i:05d}.png"
            if not cv2.imwrite(os.path.join(folder, name), img):
                raise OSError(f"{os.path.join(folder, name)}: cannot write image")
            lines.append(name)
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("\n".join(SHAPES) + "\n")
    os.makedirs(os.path.join(folder, "backup"), exist_ok=True)
    data = os.path.join(folder, "shapes.data")
    with open(data, "w") as f:
        f.write(f"classes = {len(SHAPES)}\ntrain = train.txt\nvalid = valid.txt\nlabels = labels.txt\n"
                f"backup = backup/\ntop = 5\n")
    return data
