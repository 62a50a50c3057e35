#!/usr/bin/env python3
"""Regenerates tests/data/darknet/*.npz: what darknet (AlexeyAB) itself computes
for each cfg in tests/data/darknet/cfgs/, for tests/test_darknet_fixtures.py.

    python scripts/make_darknet_fixtures.py --darknet DIR [--out tests/data/darknet] [--commit SHA]

DIR is a darknet checkout built as a CPU shared library
(``make GPU=0 LIBSO=1 OPTS=-O2``): DIR/include/darknet.h and DIR/libdarknet.so
(or set DARKNET_DIR). scripts/darknet_dump.c is compiled against them and run
once per cfg; darknet is needed only here, the fixtures are committed.

A cfg named ``train_*.cfg`` becomes a one-step training fixture (darknet's
train_network on the cfg's batch with seeded truths: boxes for a cfg with a
[yolo]/[region] head, one-hot classes otherwise); every other cfg a forward
fixture (inference with the cfg's [net] batch).

Each fixture holds: ``cfg`` (text), ``weights`` (the weights file darknet
wrote, bytes as uint8), ``input`` float32 [B, C, H, W], ``output_<i>`` (layer
i's output, float32, darknet's memory order, flattened), ``layer_types`` and
``layer_shapes`` (out_c, out_h, out_w, outputs per image) of darknet's layers,
``batch``, ``seed``, ``darknet_commit`` and ``notes``; a training fixture also
``truths`` (pydarknet's layout: [B, rows, 5] x y w h class, or [B, classes]),
``loss`` (what train_network returned) and ``trained_weights`` (after the
update); its ``output_<i>`` are those of the last mini-batch's training forward
pass.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DUMP_SOURCE = Path(__file__).resolve().parent / "darknet_dump.c"

NOTES = (
    "Computed by darknet (AlexeyAB) through scripts/darknet_dump.c: parameters filled from a seeded "
    "splitmix64 stream (weights U(-a,a), a = sqrt(3/fan_in); biases U(-.5,.5); scales U(.5,1.5); "
    "rolling_mean U(-.5,.5); rolling_variance U(.5,1.5); shortcut weights U(-.5,1.5)), input U(0,1); "
    "the network built with parse_network_cfg_custom (no conv/batch-norm fusing); outputs are each "
    "layer's l.output after network_predict_ptr (forward fixtures) or after train_network's last "
    "mini-batch (training fixtures)."
)


def fail(message):
    sys.exit(f"make_darknet_fixtures: {message}")


def darknet_commit(darknet: Path, given):
    if given:
        return given
    try:
        r = subprocess.run(["git", "-C", str(darknet), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def compile_dump(darknet: Path, work: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        fail("no C compiler (gcc or cc) found")
    header = darknet / "include" / "darknet.h"
    lib = darknet / "libdarknet.so"
    for p in (header, lib):
        if not p.exists():
            fail(f"{p} not found (build darknet with: make GPU=0 LIBSO=1 OPTS=-O2)")
    exe = work / "darknet_dump"
    cmd = [cc, "-O2", "-Wall", str(DUMP_SOURCE), f"-I{darknet / 'include'}", f"-L{darknet}", "-ldarknet",
           f"-Wl,-rpath,{darknet.resolve()}", "-lm", "-lpthread", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        fail(f"compiling darknet_dump.c failed:\n{' '.join(cmd)}\n{r.stderr}")
    return exe


def net_options(text):
    """The [net] section's key=value pairs (darknet's cfg syntax, whitespace removed)."""
    opts, in_net = {}, False
    for raw in text.splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            in_net = line in ("[net]", "[network]")
            continue
        if in_net and "=" in line:
            k, v = line.split("=", 1)
            opts.setdefault(k, v)
    return opts


def section_values(text, section, key):
    """Values of `key` in every [section] of the cfg, in order."""
    out, current = [], None
    for raw in text.splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line[1:-1]
            continue
        if current == section and line.startswith(key + "="):
            out.append(line.split("=", 1)[1])
    return out


def read_outputs(path: Path):
    data = path.read_bytes()
    if data[:8] != b"DNDUMP01":
        fail(f"{path}: not a darknet_dump outputs file")
    n, batch = np.frombuffer(data, np.int32, 2, 8)
    pos = 16
    types, shapes, outputs = [], [], []
    for _ in range(int(n)):
        types.append(data[pos:pos + 16].split(b"\0", 1)[0].decode())
        shape = np.frombuffer(data, np.int32, 4, pos + 16)
        pos += 32
        count = int(shape[3]) * int(batch)
        outputs.append(np.frombuffer(data, np.float32, count, pos).copy())
        pos += 4 * count
        shapes.append(shape.copy())
    if pos != len(data):
        fail(f"{path}: {len(data) - pos} bytes left over")
    return int(batch), types, np.array(shapes, np.int32), outputs


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        fail(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def detection_truths(rng, batch, classes, rows):
    """[batch, rows, 5] boxes x y w h class; image b has rows - (b % 2) boxes, then zero rows."""
    t = np.zeros((batch, rows, 5), np.float32)
    for b in range(batch):
        for r in range(rows - b % 2):
            w, h = rng.uniform(0.15, 0.6, 2)
            x, y = rng.uniform(0.1, 0.9, 2)
            t[b, r] = (x, y, w, h, rng.integers(0, classes))
    return t


def make_fixture(exe: Path, cfg: Path, out_dir: Path, work: Path, commit: str):
    cfg = cfg.resolve()   # darknet_dump runs in the work folder
    text = cfg.read_text()
    name = cfg.stem
    seed = zlib.crc32(name.encode()) % 1_000_000
    opts = net_options(text)
    c, h, w = int(opts["channels"]), int(opts["height"]), int(opts["width"])
    prefix = work / name
    fixture = {"cfg": np.array(text), "seed": np.int64(seed), "darknet_commit": np.array(commit),
               "notes": np.array(NOTES)}
    if name.startswith("train_"):
        heads = section_values(text, "yolo", "classes") + section_values(text, "region", "classes")
        rng = np.random.default_rng(seed)
        images = int(opts.get("batch", 1))
        if heads:
            kind, rows = "detection", 3
            truths = detection_truths(rng, images, int(heads[-1]), rows)
        else:
            # the classes: the outputs of the last layer before any [cost] (a forward run tells)
            kind = "classification"
            run([exe, "forward", cfg, str(seed), "1", f"{prefix}.probe"], work)
            _, types, shapes, _ = read_outputs(Path(f"{prefix}.probe.outputs"))
            last = max(i for i, t in enumerate(types) if t != "cost")
            classes = rows = int(shapes[last][3])
            truths = np.zeros((images, classes), np.float32)
            truths[np.arange(images), rng.integers(0, classes, images)] = 1
        truths.tofile(f"{prefix}.truths")
        stdout = run([exe, "train", cfg, str(seed), kind, f"{prefix}.truths", str(rows), prefix], work)
        loss = [float(m.group(1)) for m in re.finditer(r"^DNDUMP loss (\S+)$", stdout, re.M)]
        if len(loss) != 1:
            fail(f"{cfg}: no loss line in darknet_dump's output")
        fixture.update(truths=truths, loss=np.float64(loss[0]), kind=np.array(kind),
                       trained_weights=np.fromfile(f"{prefix}.trained.weights", np.uint8))
    else:
        images = int(opts.get("batch", 1))
        run([exe, "forward", cfg, str(seed), str(images), prefix], work)
    batch, types, shapes, outputs = read_outputs(Path(f"{prefix}.outputs"))
    x = np.fromfile(f"{prefix}.input", np.float32)
    fixture.update(weights=np.fromfile(f"{prefix}.weights", np.uint8), input=x.reshape(images, c, h, w),
                   batch=np.int64(batch), layer_types=np.array(types), layer_shapes=shapes)
    for i, o in enumerate(outputs):
        fixture[f"output_{i}"] = o
    dest = out_dir / f"{name}.npz"
    np.savez_compressed(dest, **fixture)
    return dest, types


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--darknet", default=os.environ.get("DARKNET_DIR"),
                    help="darknet checkout with include/darknet.h and libdarknet.so (env DARKNET_DIR)")
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "darknet"), help="fixture folder")
    ap.add_argument("--cfgs", default=None, help="cfg folder (default: OUT/cfgs)")
    ap.add_argument("--commit", default=None, help="darknet commit to record (default: git rev-parse in DIR)")
    ap.add_argument("names", nargs="*", help="only these cfgs (stems)")
    args = ap.parse_args(argv)
    if not args.darknet:
        fail("give --darknet DIR (or set DARKNET_DIR)")
    darknet = Path(args.darknet)
    out_dir = Path(args.out)
    cfg_dir = Path(args.cfgs) if args.cfgs else out_dir / "cfgs"
    cfgs = sorted(cfg_dir.glob("*.cfg"))
    if args.names:
        cfgs = [c for c in cfgs if c.stem in args.names]
    if not cfgs:
        fail(f"no cfgs in {cfg_dir}")
    commit = darknet_commit(darknet, args.commit)
    total = 0
    with tempfile.TemporaryDirectory(prefix="darknet_fixtures_") as tmp:
        work = Path(tmp)
        exe = compile_dump(darknet, work)
        for cfg in cfgs:
            dest, types = make_fixture(exe, cfg, out_dir, work, commit)
            size = dest.stat().st_size
            total += size
            print(f"{dest}: {len(types)} layers, {size / 1024:.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
