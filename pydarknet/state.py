"""Training state beside a weights file: iteration, images seen, the
network's random generator state and every optimizer buffer, in one NumPy
.npz written through a temporary file renamed into place."""
from __future__ import annotations

import os

import numpy as np

from ._native import check, ffi, lib
from .fileio import replacing

FORMAT = 1


class StateError(ValueError):
    """A training-state file that does not belong to this network."""


def _buffers(net):
    """{key: float32 view} of every optimizer buffer (momentum / Adam moments)."""
    out = {}
    for layer in net.layers:
        for j, (name, data) in enumerate(layer.params.items()):
            m, v = ffi.new("float **"), ffi.new("float **")
            check(lib.dn_layer_param_state(net._ptr, layer.index, j, ffi.NULL, m, v))
            for tag, ptr in (("m", m[0]), ("v", v[0])):
                if ptr != ffi.NULL:
                    out[f"{layer.index}.{name}.{tag}"] = np.frombuffer(ffi.buffer(ptr, data.size * 4), np.float32)
    return out


def save_state(net, path):
    path = os.fspath(path)
    net.enable_training()
    arrays = {k: v.copy() for k, v in _buffers(net).items()}
    meta = np.array([FORMAT, net.iteration, net.seen, lib.dn_net_rng_state(net._ptr)], dtype=np.uint64)
    with replacing(path) as f:
        np.savez(f, __meta__=meta, __layers__=np.array(len(net.layers)), **arrays)


def peek_state(path):
    """(iteration, seen) a training-state file was saved at, or None when it
    cannot be read as one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = data["__meta__"]
            return int(meta[1]), int(meta[2])
    except Exception:
        return None


def load_state(net, path):
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: cannot read training state: {e}") from None
    with data:
        if "__meta__" not in data.files:
            raise StateError(f"{path}: not a pydarknet training-state file")
        fmt, iteration, seen, rng = (int(v) for v in data["__meta__"])
        if fmt != FORMAT:
            raise StateError(f"{path}: training-state format {fmt}, this version reads {FORMAT}")
        if int(data["__layers__"]) != len(net.layers):
            raise StateError(f"{path}: saved for {int(data['__layers__'])} layers, the network has {len(net.layers)}")
        net.enable_training()
        buffers = _buffers(net)
        missing = sorted(set(buffers) - set(data.files))
        extra = sorted(set(data.files) - set(buffers) - {"__meta__", "__layers__"})
        if missing or extra:
            raise StateError(f"{path}: optimizer buffers do not match this network (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}; was it saved with another optimizer or cfg?)")
        for key, view in buffers.items():
            saved = data[key]
            if saved.shape != view.shape:
                raise StateError(f"{path}: buffer {key} has {saved.size} values, the network {view.size}")
        for key, view in buffers.items():
            view[:] = data[key]
    check(lib.dn_net_set_iteration(net._ptr, iteration, seen))
    check(lib.dn_net_seed(net._ptr, rng))
