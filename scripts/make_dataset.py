#!/usr/bin/env python3
"""Makes the project's own detection dataset: filled squares, circles and
triangles drawn over random crops of the sample photos in data/ (dog, eagle,
giraffe, horses, person), with YOLO labels beside the images, in darknet's
layout.

    python scripts/make_dataset.py out/shapes                   # 2000 train + 200 valid, 128x128
    python scripts/make_dataset.py out/shapes --train 500 --valid 100 --size 160x160 --seed 3

Writes OUT_DIR/images/{train,valid}/*.jpg with a .txt of labels beside each
image (where darknet and pydarknet look for them), OUT_DIR/train.txt,
OUT_DIR/valid.txt (a held-out split drawn from a different generator),
OUT_DIR/shapes.names, OUT_DIR/shapes.data (paths relative to it: run
darknet from OUT_DIR, or pydarknet from anywhere) and OUT_DIR/sample.jpg, a
larger picture (--sample, default 512x512) to try a trained network on. The
same seed gives the same files, byte for byte.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 128x128, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"images of {w}x{h} are too small (16x16 at least)")
    return w, h


def _count(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 image, got {n}")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=_count, default=2000, help="training images (default 2000)")
    ap.add_argument("--valid", type=_count, default=200, help="validation images (default 200)")
    ap.add_argument("--size", type=_size, default=(128, 128), help="image size WxH (default 128x128)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--sample", type=_size, default=(512, 512),
                    help="size WxH of sample.jpg, the picture to try a trained network on (default 512x512)")
    ap.add_argument("--backgrounds", nargs="+", default=None,
                    help="background photos (default: the project's data/dog.jpg, eagle.jpg, giraffe.jpg, "
                         "horses.jpg, person.jpg)")
    args = ap.parse_args(argv)
    from pydarknet.data.shapes import default_backgrounds, make_shapes_dataset

    backgrounds = args.backgrounds or default_backgrounds(os.path.join(ROOT, "data"))
    start = time.time()
    try:
        data = make_shapes_dataset(args.out_dir, train=args.train, valid=args.valid, width=args.size[0],
                                   height=args.size[1], seed=args.seed, backgrounds=backgrounds,
                                   sample=args.sample)
    except FileNotFoundError as e:
        print(f"make_dataset: {e}", file=sys.stderr)
        return 1
    print(f"{data}: {args.train} training and {args.valid} validation images of {args.size[0]}x{args.size[1]} "
          f"and {os.path.join(args.out_dir, 'sample.jpg')} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
