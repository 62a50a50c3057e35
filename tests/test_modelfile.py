"""Model files (.pdn): written from Python, read back by Python (the spec) and
by the C loader (the network), which must rebuild exactly the network the cfg
and weights give; and every kind of bad input (truncated, corrupt, wrong
version, NULL handles, images of the wrong size) is an error status with a
message, never a crash."""
import struct
import zlib

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet._native import ffi, lib
from pydarknet.cli import main
from pydarknet.modelfile import HEADER, ModelFileError, read_model, write_model

from conftest import ROOT, small_detector

TINY = """[net]
width=16
height=16
channels=3
letter_box=1
[convolutional]
filters=4
size=3
pad=1
batch_normalize=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=21
size=1
activation=linear
[yolo]
classes=2
num=3
mask=0,1,2
anchors=2,3,4,5,6,7
"""


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    net, cfg, weights = small_detector(folder)
    path = folder / "model.pdn"
    write_model(net, path)
    return net, cfg, weights, path


def load_memory(data):
    """(status, message, handle or None) of dn_net_load_memory on `data`."""
    out = ffi.new("dn_net **")
    buf = ffi.from_buffer(bytes(data))
    status = lib.dn_net_load_memory(buf, len(data), out)
    handle = ffi.gc(out[0], lib.dn_net_free) if out[0] != ffi.NULL else None
    return status, ffi.string(lib.dn_last_error()).decode("utf-8", "replace"), handle


def with_checksum(data):
    """`data` with the metadata checksum recomputed, so the loader's own checks are what is tested."""
    data = bytearray(data)
    meta_size = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, 24, zlib.crc32(bytes(data[HEADER.size:HEADER.size + meta_size])))
    return data


# ---------------------------------------------------------------- round trips

def test_metadata_reads_back_as_the_parsed_cfg(detector):
    net, _, _, path = detector
    info = read_model(path)
    assert info.spec.options == net.spec.options
    assert [(l.type, l.attrs) for l in info.spec.layers] == [(l.type, l.attrs) for l in net.spec.layers]
    # the Python types survive too (an int stays an int, a one-value list a list)
    for got, want in zip(info.spec.layers, net.spec.layers):
        assert [type(v) for v in got.attrs.values()] == [type(v) for v in want.attrs.values()]
    assert info.names == net.names and len(info.names) == 80
    assert info.input_shape == (3, 160, 160)
    assert info.tensors == [(l.index, k, a.size) for l in net.layers for k, a in l.params.items()]


def test_c_loader_rebuilds_the_same_network(detector):
    net, _, _, path = detector
    loaded = pydarknet.load_model(path)
    assert [(l.type, l.shape) for l in loaded.layers] == [(l.type, l.shape) for l in net.layers]
    for a, b in zip(net.layers, loaded.layers):
        assert a.params.keys() == b.params.keys()
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k]), (a.index, k)
    # same builder, same float32 parameters, same thread count: the same bits out
    x = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32)
    for got, want in zip(loaded.predict(x), net.predict(x)):
        assert np.array_equal(got, want)
    image = cv2.imread(str(ROOT / "data" / "dog.jpg"))
    want = net.detect(image, thresh=0.3)
    assert len(want) > 5
    assert loaded.detect(image, thresh=0.3) == want


def test_c_detect_in_one_call_matches_python(detector):
    net, _, _, path = detector
    image = cv2.imread(str(ROOT / "data" / "dog.jpg"))
    want = net.detect(image, thresh=0.3)
    out = ffi.new("dn_net **")
    assert lib.dn_net_load(str(path).encode(), out) == lib.DN_OK
    handle = ffi.gc(out[0], lib.dn_net_free)
    assert lib.dn_net_set_threads(handle, net.threads) == lib.DN_OK
    assert lib.dn_net_num_names(handle) == 80
    dets, count = ffi.new("dn_detection **"), ffi.new("int *")
    h, w = image.shape[:2]
    status = lib.dn_net_detect(handle, ffi.from_buffer(image), image.nbytes, w, h, 3, 0, 1, -1, 0.3, 0.45,
                               dets, count)
    assert status == lib.DN_OK
    got = [(dets[0][i].class_id, dets[0][i].confidence, dets[0][i].x, dets[0][i].y, dets[0][i].w, dets[0][i].h)
           for i in range(count[0])]
    assert got == [(d.class_id, d.confidence, d.x, d.y, d.w, d.h) for d in want]
    name = ffi.new("const char **")
    assert lib.dn_net_name(handle, got[0][0], name) == lib.DN_OK
    assert ffi.string(name[0]).decode() == want[0].name


def test_letter_box_option_is_carried(write_cfg, tmp_path):
    net = pydarknet.load(write_cfg(TINY))
    path = tmp_path / "tiny.pdn"
    write_model(net, path)
    loaded = pydarknet.load_model(path)
    image = (np.arange(30 * 50 * 3) % 251).astype(np.uint8).reshape(30, 50, 3)
    # letter_box=1 in the cfg: both sides letterbox by default, and differ from a stretched input
    assert loaded.detect(image, thresh=0.0) == net.detect(image, thresh=0.0)
    assert net.detect(image, thresh=0.0, letterbox=True) != net.detect(image, thresh=0.0, letterbox=False)


# ---------------------------------------------------------------- the export command

def test_export_command_writes_the_same_file(detector, tmp_path, capsys):
    net, cfg, weights, path = detector
    out = tmp_path / "cli.pdn"
    names = ROOT / "data" / "coco.names"
    assert main(["export", str(cfg), str(weights), "-o", str(out), "-names", str(names)]) == 0
    assert out.read_bytes() == path.read_bytes()
    assert "wrote" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["cli.pdn"]  # no temporary file left


def test_export_errors_are_one_line_and_keep_the_old_file(detector, tmp_path, capsys):
    _, cfg, weights, _ = detector
    out = tmp_path / "keep.pdn"
    out.write_bytes(b"old")
    assert main(["export", str(cfg), str(tmp_path / "missing.weights"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pydarknet: error: ") and "missing.weights" in err and "\n" not in err
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:1000])
    assert main(["export", str(cfg), str(short), "-o", str(out)]) == 1
    assert "byte offset" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert main(["export", str(cfg)]) == 2


# ---------------------------------------------------------------- bad files

def test_truncated_files_fail_with_the_place(detector, tmp_path):
    _, _, _, path = detector
    data = path.read_bytes()
    meta_size = struct.unpack_from("<I", data, 12)[0]
    end = HEADER.size + meta_size
    for cut in (0, 4, 8, 31, 32, 33, end // 2, end - 1, end, end + 7, len(data) - 1):
        status, msg, handle = load_memory(data[:cut])
        assert status == lib.DN_ERR_FORMAT and handle is None, cut
        assert msg.startswith("<memory>: ") and ("header" in msg or "byte offset" in msg), (cut, msg)
    cut = tmp_path / "cut.pdn"
    cut.write_bytes(data[:end + 100])
    with pytest.raises(pydarknet.DarknetError, match=r"cut\.pdn: byte offset 12: .* truncated"):
        _c_load(cut)
    with pytest.raises(ModelFileError, match=r"cut\.pdn: byte offset 12"):
        read_model(cut)
    cut.write_bytes(data[:20])        # the magic, then the header cut short
    with pytest.raises(ModelFileError, match=r"cut\.pdn: the file is 20 bytes, too short for a model file header"):
        read_model(cut)


def test_model_file_given_as_weights_is_named(detector):
    _, cfg, _, path = detector
    with pytest.raises(pydarknet.WeightsError, match=r"\.pdn: a pydarknet model file \(\.pdn\), not a darknet "
                                                     r"weights file"):
        pydarknet.load(cfg, path)


def _c_load(path):
    from pydarknet._native import check

    out = ffi.new("dn_net **")
    check(lib.dn_net_load(str(path).encode(), out))


@pytest.mark.parametrize("offset,value,message", [
    (0, b"X", "not a pydarknet model file"),
    (8, struct.pack("<I", 2), "byte offset 8: model format version 2"),
    (12, struct.pack("<I", 1 << 30), "byte offset 12"),
    (HEADER.size + 40, b"\xff", "does not match its checksum"),
])
def test_corrupt_headers(detector, offset, value, message):
    data = bytearray(detector[3].read_bytes())
    data[offset:offset + len(value)] = value
    status, msg, handle = load_memory(data)
    assert status == lib.DN_ERR_FORMAT and handle is None and message in msg


def test_inconsistent_metadata_is_refused_before_building(write_cfg, tmp_path):
    net = pydarknet.load(write_cfg(TINY))
    path = tmp_path / "tiny.pdn"
    write_model(net, path)
    data = path.read_bytes()
    assert load_memory(data)[0] == lib.DN_OK

    def patched(old, new):
        assert data.count(old) == 1, old
        return with_checksum(data.replace(old, new))

    cases = [
        # a layer type the builder does not know
        (patched(b"\x07\0\0\0maxpool", b"\x07\0\0\0maxpoox"), lib.DN_ERR_UNSUPPORTED, "unknown layer type 'maxpoox'"),
        # filters=4 read as 5: the builder's tensors no longer match the file's
        (patched(b"filters\x00\x04\0\0\0", b"filters\x00\x05\0\0\0"), lib.DN_ERR_FORMAT, "the builder made"),
        # an option kind that does not exist
        (patched(b"filters\x00\x04\0\0\0", b"filters\x09\x04\0\0\0"), lib.DN_ERR_FORMAT, "unknown kind 9"),
        # a string length running past the end
        (patched(b"\x07\0\0\0maxpool", b"\x07\0\0\x7fmaxpool"), lib.DN_ERR_FORMAT, "ends inside a layer type"),
        # a layer count larger than the metadata could hold
        (patched(b"\x04\0\0\0\x0d\0\0\0convolutional", b"\xff\xff\xff\x7f\x0d\0\0\0convolutional"),
         lib.DN_ERR_FORMAT, "layer count 2147483647 does not fit"),
    ]
    for bad, status, message in cases:
        got, msg, handle = load_memory(bad)
        assert got == status and handle is None and message in msg, msg
        assert msg.startswith("<memory>: byte offset ")


def test_every_damaged_metadata_byte_is_an_error_or_a_network(write_cfg, tmp_path):
    """Each metadata byte flipped in turn (checksum recomputed so the parser
    sees it): the loader returns a network or an error with a message, and
    never crashes or reads out of bounds (the ASan run of the C example
    covers the latter for whole files)."""
    net = pydarknet.load(write_cfg(TINY))
    path = tmp_path / "tiny.pdn"
    write_model(net, path)
    data = path.read_bytes()
    meta_size = struct.unpack_from("<I", data, 12)[0]
    outcomes = set()
    for i in range(HEADER.size, HEADER.size + meta_size):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        status, msg, handle = load_memory(with_checksum(bad))
        assert (status == lib.DN_OK) == (handle is not None), i
        assert status == lib.DN_OK or msg, i
        outcomes.add(status)
    assert lib.DN_ERR_FORMAT in outcomes and len(outcomes) >= 2


def test_files_that_cannot_be_read(tmp_path):
    out = ffi.new("dn_net **")
    assert lib.dn_net_load(str(tmp_path / "none.pdn").encode(), out) == lib.DN_ERR_IO
    assert "none.pdn: cannot open model file: No such file" in ffi.string(lib.dn_last_error()).decode()
    assert lib.dn_net_load(str(tmp_path).encode(), out) == lib.DN_ERR_IO and out[0] == ffi.NULL
    assert "not a regular file" in ffi.string(lib.dn_last_error()).decode()
    with pytest.raises(ModelFileError, match="none.pdn: cannot read model file"):
        read_model(tmp_path / "none.pdn")


# ---------------------------------------------------------------- bad arguments

def err():
    return ffi.string(lib.dn_last_error()).decode()


def test_null_handles_and_bad_images(write_cfg, tmp_path):
    null = ffi.NULL
    out = ffi.new("dn_net **")
    dets, count = ffi.new("dn_detection **"), ffi.new("int *")
    assert lib.dn_net_load(null, out) == lib.DN_ERR_ARG and "NULL" in err()
    assert lib.dn_net_load(b"x.pdn", null) == lib.DN_ERR_ARG and "NULL" in err()
    assert lib.dn_net_load_memory(null, 10, out) == lib.DN_ERR_ARG and "NULL" in err()
    assert lib.dn_net_num_names(null) == 0
    assert lib.dn_net_name(null, 0, ffi.new("const char **")) == lib.DN_ERR_ARG
    pixels = np.zeros((20, 30, 3), np.uint8)
    buf = ffi.from_buffer(pixels)
    assert lib.dn_net_detect(null, buf, pixels.nbytes, 30, 20, 3, 0, 1, -1, .5, .45, dets, count) == lib.DN_ERR_ARG
    assert "NULL" in err()

    net = pydarknet.load(write_cfg(TINY))
    path = tmp_path / "tiny.pdn"
    write_model(net, path, names=["a", "b"])
    assert lib.dn_net_load(str(path).encode(), out) == lib.DN_OK
    h = ffi.gc(out[0], lib.dn_net_free)
    name = ffi.new("const char **")
    assert lib.dn_net_name(h, 1, name) == lib.DN_OK and ffi.string(name[0]) == b"b"
    assert lib.dn_net_name(h, 2, name) == lib.DN_ERR_ARG and "class 2 has no name" in err()

    def detect(size, w, hgt, channels, stride=0):
        return lib.dn_net_detect(h, buf, size, w, hgt, channels, stride, 1, -1, .5, .45, dets, count)

    assert detect(pixels.nbytes, 30, 20, 3) == lib.DN_OK
    assert detect(pixels.nbytes, 30, 20, 4) == lib.DN_ERR_ARG and "1 or 3 channels, got 4" in err()
    assert detect(pixels.nbytes, 30, 20, 2) == lib.DN_ERR_ARG
    assert detect(pixels.nbytes - 1, 30, 20, 3) == lib.DN_ERR_SHAPE and f"{pixels.nbytes - 1} given" in err()
    assert detect(pixels.nbytes, 31, 20, 3) == lib.DN_ERR_SHAPE
    assert detect(pixels.nbytes, 30, 20, 3, stride=80) == lib.DN_ERR_ARG and "stride" in err()
    assert detect(pixels.nbytes, 0, 20, 3) == lib.DN_ERR_ARG and "image size" in err()
    assert lib.dn_net_detect(h, null, 10, 30, 20, 3, 0, 1, -1, .5, .45, dets, count) == lib.DN_ERR_ARG
    assert lib.dn_net_detect(h, buf, pixels.nbytes, 30, 20, 3, 0, 1, -1, .5, .45, null, count) == lib.DN_ERR_ARG
    # a grey image of its own size is fine
    assert detect(30 * 20, 30, 20, 1) == lib.DN_OK
