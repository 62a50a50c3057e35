"""Darknet ``.weights`` files: read into and written from a built network.

Layout: a header of int32 major, minor, revision, then ``seen`` (images
trained on) as uint64 when major*10+minor >= 2, else as uint32; then, layer by
layer in cfg order, each layer's parameter tensors as raw little-endian
float32 in the order the C core registers them (darknet's order: biases,
scales, rolling mean, rolling variance, weights; connected layers put weights
second). Files whose major or minor exceeds 1000 store connected-layer
weights transposed. Layers with ``dontload=1`` are not in the file, and
``dontloadscales=1`` leaves out the batch-norm tensors.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .fileio import MODEL_MAGIC, replacing


class WeightsError(ValueError):
    """A weights file that does not fit the network (names the file, layer, byte offset)."""


@dataclass
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_is_64bit(self):
        return self.major * 10 + self.minor >= 2

    @property
    def transposed(self):
        return self.major > 1000 or self.minor > 1000

    @property
    def size(self):
        return 12 + (8 if self.seen_is_64bit else 4)

    def pack(self):
        fmt = "<iiiQ" if self.seen_is_64bit else "<iiiI"
        return struct.pack(fmt, self.major, self.minor, self.revision, self.seen)


_BN = ("scales", "rolling_mean", "rolling_variance")


def _tensors(net, max_layers=None):
    """(layer, name, array view) for every tensor stored in a weights file, in file order."""
    n = len(net.layers) if max_layers is None else min(max_layers, len(net.layers))
    for layer in net.layers[:n]:
        attrs = layer.spec.attrs if layer.spec is not None else {}
        if attrs.get("dontload", 0):
            continue
        for name, arr in layer.params.items():
            if name in _BN and attrs.get("dontloadscales", 0):
                continue
            yield layer, name, arr


def read_header(f, path):
    raw = f.read(12)
    if raw.startswith(MODEL_MAGIC):
        raise WeightsError(f"{path}: a pydarknet model file (.pdn), not a darknet weights file; it holds the "
                           f"network itself and is loaded with pydarknet.load_model or dn_net_load")
    if len(raw) < 12:
        raise WeightsError(f"{path}: file is {len(raw)} bytes, too short for a darknet weights header")
    major, minor, revision = struct.unpack("<iii", raw)
    header = WeightsHeader(major, minor, revision)
    width = 8 if header.seen_is_64bit else 4
    raw = f.read(width)
    if len(raw) < width:
        raise WeightsError(f"{path}: truncated header (no 'seen' count at byte offset 12)")
    header.seen = struct.unpack("<Q" if width == 8 else "<I", raw)[0]
    return header


def partial_layers(net, path):
    """How many leading layers the weights file holds when it ends exactly
    after one layer's tensors before the network's end (darknet's partial
    files, e.g. yolov4-tiny.conv.29); None when it is the whole network or
    does not end at a layer boundary (the full read then names the problem)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = read_header(f, path)
    except (OSError, ValueError):
        return None
    body = size - header.size
    per_layer = [0] * len(net.layers)
    for layer, _, arr in _tensors(net):
        per_layer[layer.index] += arr.size * 4
    if body >= sum(per_layer):
        return None
    found, total = None, 0
    for i, nbytes in enumerate(per_layer):
        total += nbytes
        if total == body and nbytes:
            found = i + 1
        if total > body:
            break
    return found


def load_weights(net, path, max_layers=None, allow_extra=None):
    """Reads `path` into the network's parameters (the first `max_layers`
    layers only when given, darknet's ``partial``). A file that ends early, or
    that has bytes left over when every layer has been read (unless
    max_layers limits the read), raises WeightsError naming the layer and
    byte offset; the network then keeps the values it had. Returns the header."""
    path = os.fspath(path)
    if allow_extra is None:
        allow_extra = max_layers is not None
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WeightsError(f"{path}: cannot open weights file: {e.strerror}") from None
    with f:
        header = read_header(f, path)
        staged = []
        offset = header.size
        for layer, name, arr in _tensors(net, max_layers):
            buf = np.empty(arr.shape, np.float32)
            got = f.readinto(memoryview(buf).cast("B"))
            if got != buf.nbytes:
                raise WeightsError(
                    f"{path}: file ends at byte offset {offset + got} inside layer {layer.index} "
                    f"[{layer.type}] tensor '{name}' ({buf.size} floats from byte offset {offset}); "
                    f"the file does not match this cfg")
            if name == "weights" and layer.type == "connected" and header.transposed:
                n_out = len(layer.params["biases"])
                buf = np.ascontiguousarray(buf.reshape(-1, n_out).T).reshape(-1)
            staged.append((arr, buf))
            offset += buf.nbytes
        if not allow_extra:
            rest = len(f.read(1 << 20))
            if rest:
                size = os.path.getsize(path)
                raise WeightsError(
                    f"{path}: {size - offset} bytes left after the last layer (byte offset {offset} of {size}); "
                    f"the file does not match this cfg")
    for arr, buf in staged:
        arr[...] = buf
    return header


def save_weights(net, path, header=None, max_layers=None):
    """Writes the network's parameters as a darknet weights file, through a
    temporary file renamed into place so an existing file is never left half
    written. `header` defaults to the one read by load_weights, or darknet's
    current format (0.2.5, 64-bit seen)."""
    path = os.fspath(path)
    header = header or getattr(net, "weights_header", None) or WeightsHeader()
    with replacing(path) as f:
        f.write(header.pack())
        for layer, name, arr in _tensors(net, max_layers):
            if name == "weights" and layer.type == "connected" and header.transposed:
                n_out = len(layer.params["biases"])
                arr = np.ascontiguousarray(arr.reshape(n_out, -1).T)
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
