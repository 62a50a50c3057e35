"""A small detection dataset of synthetic shapes written to disk in darknet's
layout (images and labels side by side, a list file, a .data and a .names
file), for tests, demos and benchmarks."""
from __future__ import annotations

import os

import numpy as np

from ..synthetic import SHAPES, draw_shapes

__all__ = ["write_shapes_dataset"]


def write_shapes_dataset(folder, count=16, width=320, height=240, per_image=(1, 4), seed=0, ext=".jpg",
                         quality=95):
    """Writes `count` images of width x height with 1..4 shapes each to
    folder/images/, their YOLO labels beside them (darknet's layout), and
    folder/train.txt, folder/shapes.names, folder/shapes.data (relative
    paths). Returns the .data file's path."""
    import cv2

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
