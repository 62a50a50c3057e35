"""Darknet .weights files: every header version round-trips byte for byte,
partial loads, and files that do not fit the cfg are refused with the layer
and byte offset, leaving the network as it was."""
import struct

import numpy as np
import pytest

import pydarknet
from pydarknet.weights import WeightsError, WeightsHeader
from conftest import randomize

CFG = """[net]
width=8
height=8
channels=3
[convolutional]
filters=4
size=3
stride=1
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=2
size=1
stride=1
activation=linear
[connected]
output=5
activation=linear
"""


def tensors(net):
    return [(l.index, k, v.copy()) for l in net.layers for k, v in l.params.items()]


def file_with_header(tmp_path, net, header):
    path = tmp_path / f"h{header.major}_{header.minor}.weights"
    net.save_weights(path) if header is None else pydarknet.weights.save_weights(net, path, header=header)
    return path


@pytest.mark.parametrize("major,minor,seen", [(0, 1, 123), (0, 2, 2 ** 40), (1, 0, 7), (0, 1001, 5)])
def test_round_trip_is_byte_identical(tmp_path, write_cfg, major, minor, seen):
    net = pydarknet.load(write_cfg(CFG))
    randomize(net, 3)
    src = file_with_header(tmp_path, net, WeightsHeader(major, minor, 5, seen))
    other = pydarknet.load(write_cfg(CFG))
    header = other.load_weights(src)
    assert (header.major, header.minor, header.seen) == (major, minor, seen)
    for (_, _, a), (_, _, b) in zip(tensors(net), tensors(other)):
        assert np.array_equal(a, b)
    out = tmp_path / "again.weights"
    other.save_weights(out)
    assert out.read_bytes() == src.read_bytes()


def test_header_layout(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    old = file_with_header(tmp_path, net, WeightsHeader(0, 1, 0, 9))
    new = file_with_header(tmp_path, net, WeightsHeader(0, 2, 5, 9))
    assert struct.unpack("<iiiI", old.read_bytes()[:16]) == (0, 1, 0, 9)
    assert struct.unpack("<iiiQ", new.read_bytes()[:20]) == (0, 2, 5, 9)
    assert new.stat().st_size == old.stat().st_size + 4


def test_file_order_is_darknets(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    randomize(net, 4)
    path = tmp_path / "w.weights"
    net.save_weights(path)
    floats = np.frombuffer(path.read_bytes()[20:], np.float32)
    conv, conv2, fc = (net.layers[i].params for i in range(3))
    order = [conv["biases"], conv["scales"], conv["rolling_mean"], conv["rolling_variance"], conv["weights"],
             conv2["biases"], conv2["weights"], fc["biases"], fc["weights"]]
    assert np.array_equal(floats, np.concatenate(order))


def test_transposed_connected_weights(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    randomize(net, 5)
    path = file_with_header(tmp_path, net, WeightsHeader(0, 1001, 0, 0))
    floats = np.frombuffer(path.read_bytes()[16:], np.float32)
    w = net.layers[2].params["weights"].reshape(5, -1)
    assert np.array_equal(floats[-w.size:], w.T.reshape(-1))


def test_truncated_file_names_layer_and_offset(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    randomize(net, 6)
    path = tmp_path / "w.weights"
    net.save_weights(path)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    fresh = pydarknet.load(write_cfg(CFG))
    before = tensors(fresh)
    with pytest.raises(WeightsError, match=r"w\.weights: file ends at byte offset \d+ inside layer 2 \[connected\]"):
        fresh.load_weights(path)
    for (_, _, a), (_, _, b) in zip(before, tensors(fresh)):
        assert np.array_equal(a, b)


def test_oversized_file_is_refused(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    path = tmp_path / "w.weights"
    net.save_weights(path)
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(WeightsError, match="8 bytes left after the last layer"):
        pydarknet.load(write_cfg(CFG), path)


def test_short_header(tmp_path, write_cfg):
    path = tmp_path / "w.weights"
    path.write_bytes(b"\0" * 7)
    with pytest.raises(WeightsError, match="too short"):
        pydarknet.load(write_cfg(CFG), path)


def test_missing_file(tmp_path, write_cfg):
    with pytest.raises(WeightsError, match="cannot open"):
        pydarknet.load(write_cfg(CFG), tmp_path / "nope.weights")


def test_partial_load_first_layers(tmp_path, write_cfg):
    net = pydarknet.load(write_cfg(CFG))
    randomize(net, 7)
    path = tmp_path / "w.weights"
    net.save_weights(path, max_layers=1)
    fresh = pydarknet.load(write_cfg(CFG))  # layers not read keep their initial values
    other = pydarknet.load(write_cfg(CFG), path, max_layers=1)
    assert np.array_equal(other.layers[0].params["weights"], net.layers[0].params["weights"])
    assert np.array_equal(other.layers[1].params["weights"], fresh.layers[1].params["weights"])
    # a full file read partially: the rest of the file is allowed
    net.save_weights(path)
    other = pydarknet.load(write_cfg(CFG), path, max_layers=2)
    assert np.array_equal(other.layers[1].params["weights"], net.layers[1].params["weights"])
    assert np.array_equal(other.layers[2].params["weights"], fresh.layers[2].params["weights"])


def test_dontload_layer_is_not_in_the_file(tmp_path, write_cfg):
    cfg = CFG.replace("filters=2\n", "filters=2\ndontload=1\n")
    net = pydarknet.load(write_cfg(cfg))
    path = tmp_path / "w.weights"
    net.save_weights(path)
    full = pydarknet.load(write_cfg(CFG))
    full_path = tmp_path / "full.weights"
    full.save_weights(full_path)
    n2 = sum(v.size for v in full.layers[1].params.values())
    assert full_path.stat().st_size - path.stat().st_size == 4 * n2


def test_save_is_atomic_on_failure(tmp_path, write_cfg, monkeypatch):
    net = pydarknet.load(write_cfg(CFG))
    path = tmp_path / "w.weights"
    path.write_bytes(b"previous checkpoint")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "ascontiguousarray", boom)
    with pytest.raises(OSError):
        net.save_weights(path)
    assert path.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".cfg"] == ["w.weights"]


def test_initial_weights_follow_darknet(write_cfg):
    # uniform in +-sqrt(2 / fan_in), zero biases; the same seed gives the same network
    a, b, c = (pydarknet.load(write_cfg(CFG), seed=s) for s in (1, 1, 2))
    w = a.layers[0].params["weights"]
    bound = np.sqrt(2 / (3 * 3 * 3))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and abs(w.mean()) < 0.1 * bound
    assert not a.layers[0].params["biases"].any()
    assert np.all(a.layers[0].params["scales"] == 1) and np.all(a.layers[0].params["rolling_variance"] == 1)
    assert np.array_equal(w, b.layers[0].params["weights"]) and not np.array_equal(w, c.layers[0].params["weights"])
    fc = a.layers[2].params["weights"]
    assert np.abs(fc).max() <= np.sqrt(2 / (2 * 8 * 8))
