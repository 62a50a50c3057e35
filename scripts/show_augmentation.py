#!/usr/bin/env python3
"""Renders a grid of augmented training samples, boxes drawn, as a cfg's
[net] and [yolo] options make them (darknet's -show_imgs, as one picture).

    python scripts/show_augmentation.py data/obj.data cfg/yolo-obj.cfg -o grid.png
    python scripts/show_augmentation.py train.txt cfg/yolo-obj.cfg --names obj.names -n 8 --seed 3

The first argument is a .data file or an image list. Boxes carry their class
name when names are known (.data names=, or --names), else the class id.
Classifier cfgs (no [yolo]/[region] layer) show the top label of each sample.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _color(c):
    rng = np.random.default_rng(int(c) + 7)
    return tuple(int(v) for v in rng.integers(64, 256, 3))


def _tile(x, truths, names, classifier, label_h):
    import cv2

    img = np.ascontiguousarray((np.clip(x, 0, 1).transpose(1, 2, 0)[:, :, ::-1] * 255 + 0.5).astype(np.uint8))
    if img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    if classifier:
        k = int(np.argmax(truths))
        text = f"{names[k] if names and k < len(names) else k} {truths[k]:.2f}"
        cv2.putText(img, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
        return img
    for bx, by, bw, bh, c in truths:
        if bw <= 0 or bh <= 0:
            continue
        l, t = int(round((bx - bw / 2) * w)), int(round((by - bh / 2) * h))
        r, b = int(round((bx + bw / 2) * w)) - 1, int(round((by + bh / 2) * h)) - 1
        col = _color(c)
        cv2.rectangle(img, (l, t), (r, b), col, 1)
        name = names[int(c)] if names and int(c) < len(names) else str(int(c))
        cv2.putText(img, name, (l + 1, max(t - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA)
    return img


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help=".data file or image list")
    ap.add_argument("cfg")
    ap.add_argument("-o", "--out", default="augmentation.png")
    ap.add_argument("-n", type=int, default=16, help="samples (default 16)")
    ap.add_argument("--cols", type=int, default=0, help="grid columns (default: about square)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-index", type=int, default=0, help="the training batch to show")
    ap.add_argument("--names", help=".names file for an image list")
    ap.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="network size (default: the cfg's)")
    args = ap.parse_args(argv)

    import cv2

    from pydarknet.cfg import HEAD_TYPES, CfgError, parse_cfg
    from pydarknet.data import ClassifierLoader, DataError, DetectionLoader
    from pydarknet.data.loader import _is_data_file
    from pydarknet.datafiles import DataFileError, load_data_file, read_names

    try:
        spec = parse_cfg(args.cfg)
        if args.size:
            spec.options["width"], spec.options["height"] = args.size
        heads = [l for l in spec.layers if l.type in HEAD_TYPES]
        names = read_names(args.names) if args.names else None
        if names is None and _is_data_file(args.data):
            names = load_data_file(args.data).names()
        if heads:
            loader = DetectionLoader.from_files(args.data, spec, seed=args.seed, batch_size=args.n, workers=0,
                                                multiscale=False)
        else:
            loader = ClassifierLoader.from_files(args.data, spec, seed=args.seed, batch_size=args.n, workers=0,
                                                 names=names)
            names = names or loader.dataset.names
        with loader:
            x, t = loader.batch(args.batch_index)
    except (CfgError, DataError, DataFileError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tiles = [_tile(x[i], t[i], names, not heads, 16) for i in range(len(x))]
    cols = args.cols or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    th, tw = tiles[0].shape[:2]
    pad = 4
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 40, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y0, x0 = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y0:y0 + th, x0:x0 + tw] = tile
    if not cv2.imwrite(args.out, grid):
        print(f"error: {args.out}: cannot write image", file=sys.stderr)
        return 1
    if loader.summary.total:
        print(loader.summary.report(), file=sys.stderr)
    print(f"wrote {args.out} ({len(tiles)} samples, {tw}x{th})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
