#!/usr/bin/env python3
"""Every layer of whole models against darknet itself: the table of the
fidelity notes.

    python scripts/compare_with_darknet.py --darknet DIR [--size N] [cfg ...]

For each cfg (default: every model in cfg/), at a small input size (--size, or
a size per model that keeps the run short), darknet (a CPU build of
AlexeyAB/darknet, see scripts/make_darknet_fixtures.py) builds the network,
fills it with seeded random parameters, saves them with its own save_weights
and runs a seeded input through it (scripts/darknet_dump.c); pydarknet loads
the same cfg and darknet's weights file and runs the same input. Printed per
model: the number of layers, the worst layer and its error
max|pydarknet - darknet| / max(1, max|darknet|) over that layer's output.
Exits 1 when a layer differs by more than --tol.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_darknet_fixtures as fx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# sizes that keep each deep model's run to seconds on a CPU (a multiple of its total stride)
SIZES = {"yolov3": 160, "yolov4": 160, "yolov4-csp": 160, "yolov3-spp": 160, "yolov2": 160,
         "csdarknet53-omega": 128, "resnet50": 128, "darknet19": 128}


def with_size(text, size):
    out, in_net = [], False
    for line in text.splitlines():
        key = "".join(line.split()).split("=", 1)[0]
        if line.strip().startswith("["):
            in_net = line.strip() in ("[net]", "[network]")
        if in_net and key in ("width", "height"):
            line = f"{key}={size}"
        elif in_net and key in ("batch", "subdivisions"):
            line = f"{key}=1"
        out.append(line)
    return "\n".join(out) + "\n"


def compare(exe, cfg, size, work):
    import pydarknet

    text = cfg.read_text()
    size = size or SIZES.get(cfg.stem) or int(fx.net_options(text)["width"])
    local = work / f"{cfg.stem}.cfg"
    local.write_text(with_size(text, size))
    prefix = work / cfg.stem
    try:
        fx.run([exe, "forward", local, "7", "1", prefix], work)
    except SystemExit as e:   # darknet refused or crashed: its last line says why
        return size, None, "darknet: " + str(e).strip().splitlines()[-1][-90:], None
    _, types, _, outputs = fx.read_outputs(Path(f"{prefix}.outputs"))
    c = int(fx.net_options(text)["channels"])
    x = np.fromfile(f"{prefix}.input", np.float32).reshape(1, c, size, size)
    net = pydarknet.load(local, f"{prefix}.weights", batch=1)
    net.forward(x)
    worst, where = 0.0, None
    for i, (layer, ref) in enumerate(zip(net.layers, outputs)):
        if layer.type != types[i]:
            raise SystemExit(f"{cfg}: layer {i} is [{layer.type}] here and [{types[i]}] in darknet")
        if layer.type == "cost":  # darknet leaves a [cost] output unwritten at inference
            continue
        out = layer.output.reshape(-1).astype(np.float64)
        err = float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max()))
        if not err <= worst:
            worst, where = err, f"{i} [{layer.type}]"
    return size, len(net.layers), where, worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--darknet", default=os.environ.get("DARKNET_DIR"),
                    help="darknet checkout with include/darknet.h and libdarknet.so (env DARKNET_DIR)")
    ap.add_argument("--size", type=int, default=None, help="input width and height for every model")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest error accepted (default 1e-4)")
    ap.add_argument("cfgs", nargs="*", help="cfg files (default: every model in cfg/)")
    args = ap.parse_args(argv)
    if not args.darknet:
        fx.fail("give --darknet DIR (or set DARKNET_DIR)")
    cfgs = [Path(c) for c in args.cfgs] or sorted(p for p in (ROOT / "cfg").glob("*.cfg"))
    bad = 0
    print(f"{'cfg':<28} {'size':>5} {'layers':>6}  {'worst layer':<22} {'error':>9}")
    with tempfile.TemporaryDirectory(prefix="compare_darknet_") as tmp:
        work = Path(tmp)
        exe = fx.compile_dump(Path(args.darknet), work)
        for cfg in cfgs:
            size, n, where, err = compare(exe, cfg, args.size, work)
            if err is None:
                print(f"{cfg.name:<28} {size:>5} {'-':>6}  {where}", flush=True)
                continue
            bad += not err <= args.tol
            print(f"{cfg.name:<28} {size:>5} {n:>6}  {where or '-':<22} {err:>9.2e}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
