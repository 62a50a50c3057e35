"""Model files (``.pdn``): one file a C program loads without Python.

A model file holds what the Python side feeds the C builder for a parsed cfg
(the network input shape, every layer's type and resolved options with their
types, the [net] options), optional class names, and every parameter tensor,
so the C core rebuilds the network with the same builder calls
(``dn_net_load``, src_c/core/model.c) and no cfg semantics are written twice.

Format version 1, all numbers little-endian::

    header, 32 bytes: "PDNMODEL", u32 version (1), u32 M (metadata bytes),
                      u64 D (tensor bytes; the file is 32 + M + D bytes),
                      u32 CRC-32 of the metadata (zlib.crc32), u32 0
    metadata:         u32 channels, height, width; options ([net]);
                      u32 n + n strings (class names);
                      u32 layer count, per layer: string type, options,
                          u32 tensor count, per tensor: string name, u64 float count
    tensor data:      float32 values of the tensors in the order listed

    string:  u32 length + UTF-8 bytes (no zero byte)
    options: u32 count, per option: string key, u8 kind, value; kinds:
             0 integer (i32), 1 number (f64), 2 string, 3 integer list
             (u32 n + n i32), 4 number list (u32 n + n f64)

Numbers are f64 so options read back exactly (the builder takes floats).

``write_model`` writes a built network (through a temporary file renamed
into place), ``read_model`` reads the metadata back (the spec, names and
tensor list), and ``load_model`` builds the network from the file in the C
core and wraps it as a :class:`~pydarknet.network.Network`.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ._native import check, ffi, lib
from .cfg import LayerSpec, NetSpec
from .fileio import MODEL_MAGIC as MAGIC, replacing
from .network import Network, option_kind

VERSION = 1
HEADER = struct.Struct("<8sIIQII")
_KINDS = {"int": 0, "float": 1, "str": 2, "ints": 3, "floats": 4}


class ModelFileError(ValueError):
    """A model file that cannot be written or read (names the file and byte offset)."""


@dataclass
class ModelInfo:
    spec: NetSpec
    names: List[str]
    input_shape: tuple       # (channels, height, width)
    tensors: List[tuple]     # (layer index, name, float count) in file order


# ----------------------------------------------------------------------------- writing

def _string(text, what):
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ModelFileError(f"{what} {text!r} holds a zero character")
    return struct.pack("<I", len(data)) + data


def _options(items, owner):
    out = [struct.pack("<I", len(items))]
    for key, value in items:
        kind, value = option_kind(value)
        out.append(_string(key, "option name") + bytes([_KINDS[kind]]))
        try:
            if kind == "int":
                out.append(struct.pack("<i", value))
            elif kind == "float":
                out.append(struct.pack("<d", value))
            elif kind == "str":
                out.append(_string(value, f"{owner} option '{key}'"))
            else:
                code = "i" if kind == "ints" else "d"
                out.append(struct.pack(f"<I{len(value)}{code}", len(value), *value))
        except struct.error:
            raise ModelFileError(f"{owner} option '{key}' = {value!r} does not fit a 32-bit integer") from None
    return b"".join(out)


def _metadata(net, names):
    _, c, h, w = net._input_shape()
    parts = [struct.pack("<III", c, h, w), _options(list(net.spec.options.items()), "[net]"),
             struct.pack("<I", len(names))]
    parts += [_string(n, "class name") for n in names]
    parts.append(struct.pack("<I", len(net.layers)))
    for layer in net.layers:
        owner = f"layer {layer.index} [{layer.type}]"
        parts.append(_string(layer.spec.type, "layer type") + _options(list(layer.spec.attrs.items()), owner))
        params = layer.params
        parts.append(struct.pack("<I", len(params)))
        parts += [_string(name, "tensor name") + struct.pack("<Q", arr.size) for name, arr in params.items()]
    return b"".join(parts)


def write_model(net: Network, path, names: Optional[List[str]] = None):
    """Writes `net` (built from a cfg, with its weights) as a model file at
    `path`, with class names `names` (default: the network's, if any). An
    existing file is replaced only once the new one is complete."""
    path = os.fspath(path)
    names = list(names if names is not None else (net.names or []))
    meta = _metadata(net, names)
    tensors = [arr for layer in net.layers for arr in layer.params.values()]
    data_size = sum(arr.size * 4 for arr in tensors)
    with replacing(path) as f:
        f.write(HEADER.pack(MAGIC, VERSION, len(meta), data_size, zlib.crc32(meta), 0))
        f.write(meta)
        for arr in tensors:
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())


# ----------------------------------------------------------------------------- reading

class _Reader:
    def __init__(self, path, data, base):
        self.path, self.data, self.base, self.pos = path, data, base, 0

    def fail(self, message, at=None):
        offset = self.base + (self.pos if at is None else at)
        raise ModelFileError(f"{self.path}: byte offset {offset}: {message}")

    def take(self, fmt, what):
        size = struct.calcsize(fmt)
        if len(self.data) - self.pos < size:
            self.fail(f"the metadata ends inside {what}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def string(self, what):
        (n,) = self.take("<I", what)
        if len(self.data) - self.pos < n:
            self.fail(f"the metadata ends inside {what}")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8 text", self.pos - n)

    def options(self):
        (count,) = self.take("<I", "the option count")
        out = {}
        for _ in range(count):
            key = self.string("an option name")
            (kind,) = self.take("<B", "an option kind")
            if kind == 0:
                out[key] = self.take("<i", "an option value")[0]
            elif kind == 1:
                out[key] = self.take("<d", "an option value")[0]
            elif kind == 2:
                out[key] = self.string("a string option")
            elif kind in (3, 4):
                (n,) = self.take("<I", "a list length")
                if n > len(self.data):
                    self.fail(f"option '{key}' lists {n} values, more than the metadata holds")
                out[key] = list(self.take(f"<{n}{'i' if kind == 3 else 'd'}", "an option value"))
            else:
                self.fail(f"option '{key}' has unknown kind {kind}", self.pos - 1)
        return out


def read_model(path) -> ModelInfo:
    """The metadata of a model file: the network spec (as parse_cfg gives it,
    with `path` for the file), class names, input shape and tensor list.
    Raises ModelFileError naming the file and byte offset."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            if not head.startswith(MAGIC):
                raise ModelFileError(f"{path}: not a pydarknet model file (no {MAGIC.decode()} header)")
            if len(head) < HEADER.size:
                raise ModelFileError(f"{path}: the file is {len(head)} bytes, too short for a model file header "
                                     f"({HEADER.size} bytes)")
            _, version, meta_size, data_size, crc, _ = HEADER.unpack(head)
            if version != VERSION:
                raise ModelFileError(f"{path}: byte offset 8: model format version {version}; "
                                     f"this pydarknet reads version {VERSION}")
            meta = f.read(meta_size)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read model file: {e.strerror or e}") from None
    if size != HEADER.size + meta_size + data_size:
        raise ModelFileError(f"{path}: byte offset 12: the header announces {meta_size} bytes of metadata and "
                             f"{data_size} of tensor data, but {size - HEADER.size} bytes follow it")
    if zlib.crc32(meta) != crc:
        raise ModelFileError(f"{path}: byte offset {HEADER.size}: the metadata does not match its checksum")
    r = _Reader(path, meta, HEADER.size)
    shape = r.take("<III", "the input shape")
    options = r.options()
    (n,) = r.take("<I", "the class name count")
    names = [r.string("a class name") for _ in range(n)]
    (nlayers,) = r.take("<I", "the layer count")
    layers, tensors = [], []
    for i in range(nlayers):
        kind = r.string("a layer type")
        layers.append(LayerSpec(i, kind, None, path, r.options()))
        (count,) = r.take("<I", "the tensor count")
        for _ in range(count):
            name = r.string("a tensor name")
            tensors.append((i, name, r.take("<Q", "a tensor size")[0]))
    if r.pos != len(meta):
        r.fail(f"{len(meta) - r.pos} bytes of metadata left after the last layer")
    return ModelInfo(NetSpec(path, options, layers), names, tuple(shape), tensors)


def load_model(path, threads: Optional[int] = None, names=None) -> Network:
    """The network of a model file, built by the C core's loader (as a C
    program loads it) and ready to run. `names` replaces the stored class names."""
    info = read_model(path)
    out = ffi.new("dn_net **")
    check(lib.dn_net_load(os.fsencode(os.fspath(path)), out))
    if names is None:
        names = info.names or None
    return Network(info.spec, threads=threads, names=names, handle=out[0])
