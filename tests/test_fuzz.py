"""Fuzzed readers (property-based, hypothesis): valid seeds of the files
pydarknet reads (cfg, .weights, .pdn, .data, .names, YOLO labels, image
lists, the JSON-lines training log, JPEG/PNG/BMP images), mutated
(bytes flipped, inserted, deleted, truncated), fed to the real readers. Every
input must give a result or the package's own exception with a message
(CfgError, WeightsError, ModelFileError, DataFileError, DarknetError; label
files: usable rows and an issue per bad line), never a crash or another
exception from deep inside. The runs
here are short (a bounded number of inputs per reader, no deadline); set
PYDARKNET_FUZZ_EXAMPLES for a long run."""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the hypothesis test extra is not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import pydarknet  # noqa: E402
from pydarknet import CfgError, DarknetError, ModelFileError, WeightsError  # noqa: E402
from conftest import randomize  # noqa: E402

EXAMPLES = int(os.environ.get("PYDARKNET_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SEED_CFG = b"""[net]
width=16
height=16
channels=3
batch=2
[convolutional]
filters=8
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky
[maxpool]
size=2
stride=1
[route]
layers=-1,-2
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=0,1
anchors=2,3, 4,5, 6,7
classes=2
num=3
"""


@st.composite
def mutated(draw, seed):
    """seed with a few byte-level edits: flips, inserts, deletes, a truncation."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "printable"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        else:   # a printable character in place: keeps cfgs mostly text, reaching the option parsers
            data[at] = draw(st.sampled_from(b"0123456789-=,.[]#\n abcxyz"))
    return bytes(data)


def _built(tmp_path, name="seed.cfg"):
    path = tmp_path / name
    path.write_bytes(SEED_CFG)
    net = pydarknet.load(str(path))
    randomize(net, 1)
    return net


@FUZZ
@given(data=mutated(SEED_CFG))
def test_cfg_reader(tmp_path, data):
    path = tmp_path / "fuzz.cfg"
    path.write_bytes(data)
    try:
        net = pydarknet.load(str(path))
    except (CfgError, DarknetError) as e:
        assert str(e), "an error without a message"
        return
    net.predict(np.zeros((net.batch, net.channels, net.height, net.width), np.float32))


@FUZZ
@given(st.data())
def test_weights_reader(tmp_path, data):
    net = _built(tmp_path)
    weights = tmp_path / "seed.weights"
    if not weights.exists():
        net.save_weights(str(weights))
    bad = tmp_path / "fuzz.weights"
    bad.write_bytes(data.draw(mutated(weights.read_bytes())))
    try:
        net.load_weights(str(bad))
    except (WeightsError, DarknetError) as e:
        assert str(e), "an error without a message"


@FUZZ
@given(st.data())
def test_model_file_reader(tmp_path, data):
    """.pdn model files through the C core's loader (what a C program calls) and the Python reader."""
    seed = tmp_path / "seed.pdn"
    if not seed.exists():
        pydarknet.write_model(_built(tmp_path), str(seed), names=["a", "b"])
    bad = tmp_path / "fuzz.pdn"
    bad.write_bytes(data.draw(mutated(seed.read_bytes())))
    try:
        net = pydarknet.load_model(str(bad))
    except (ModelFileError, DarknetError) as e:
        assert str(e), "an error without a message"
        return
    net.predict(np.zeros((1, net.channels, net.height, net.width), np.float32))


SEED_DATA = b"classes = 3\ntrain = train.txt\nvalid = valid.txt\nnames = shapes.names\nbackup = backup/\n"
SEED_NAMES = b"square\ncircle\ntriangle\n"
SEED_LABELS = b"0 0.5 0.5 0.2 0.3\n2 0.1 0.9 0.05 0.1\n1 0.75 0.25 0.4 0.4\n"


@FUZZ
@given(data=mutated(SEED_DATA))
def test_data_file_reader(tmp_path, data):
    """.data files: read_data_file and load_data_file (the typed view) give values or DataFileError."""
    from pydarknet.datafiles import DataFileError, load_data_file

    path = tmp_path / "fuzz.data"
    path.write_bytes(data)
    try:
        d = load_data_file(path)
        d.classes
        d.train, d.valid, d.names_path, d.backup
    except DataFileError as e:
        assert str(e), "an error without a message"


@FUZZ
@given(data=mutated(SEED_NAMES))
def test_names_reader(tmp_path, data):
    from pydarknet.datafiles import DataFileError, read_names

    path = tmp_path / "fuzz.names"
    path.write_bytes(data)
    try:
        names = read_names(path)
    except DataFileError as e:
        assert str(e), "an error without a message"
        return
    assert all(isinstance(n, str) and n for n in names)


@FUZZ
@given(data=mutated(SEED_LABELS))
def test_label_reader(tmp_path, data):
    """YOLO label files: usable rows as float32 [n, 5] inside the image, every other line an issue naming it."""
    from pydarknet.data.lists import read_labels

    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    rows, issues = read_labels(path, classes=3)
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == 5
    assert np.isfinite(rows).all()
    if len(rows):
        assert ((rows[:, 0] >= 0) & (rows[:, 0] < 3)).all()
    assert all(str(i) for i in issues)


@FUZZ
@given(st.data())
def test_image_list_reader(tmp_path, data):
    """Image lists: the paths that exist are kept (each image's labels then read), the others reported; a list
    with none is one DataError, a binary one a DataFileError; never another exception."""
    from pydarknet.data import DataError, DetectionDataset
    from pydarknet.datafiles import DataFileError

    images = tmp_path / "images"
    if not images.exists():
        images.mkdir()
        for i in range(3):
            (images / f"im{i}.jpg").write_bytes(b"\xff\xd8\xff\xd9")   # existence is what the list reader checks
            (images / f"im{i}.txt").write_bytes(SEED_LABELS)
    seed = "".join(f"{images / f'im{i}.jpg'}\n" for i in range(3)).encode()
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data.draw(mutated(seed)))
    try:
        ds = DetectionDataset.from_list(path, 3)
    except (DataError, DataFileError) as e:   # no usable path; not a text file
        assert str(e), "an error without a message"
        return
    for i in range(len(ds)):
        rows, _ = ds.labels(i)
        assert rows.shape[1] == 5
    for examples in ds.summary.examples.values():   # undecodable bytes shown as escapes: logs and other
        for text in examples:                         # processes (pytest-xdist's workers) can carry them
            text.encode("utf-8")


SEED_LOG = b"".join(
    b'{"iteration": %d, "loss": %.6f, "avg_loss": %.6f, "learning_rate": 0.001, "images": %d, "seconds": 0.01, '
    b'"load_seconds": 0.0, "images_per_s": 400.0, "width": 32, "height": 32, "time": 1700000000.5%s}\n'
    % (i, 10.0 / i, 12.0 / i, 4 * i, b', "mAP": 0.%d' % i if i % 2 == 0 else b"") for i in range(1, 7))


def _check_log(path, start):
    import json
    import math

    from pydarknet.trainer import _TrainLog

    log = _TrainLog(str(path), start)
    for rec in log.records:
        assert isinstance(rec, dict) and isinstance(rec["iteration"], int) and rec["iteration"] <= start
    for key in ("loss", "avg_loss", "mAP"):
        for v in (log.last(key), log.best(key)):
            assert v is None or (isinstance(v, (int, float)) and math.isfinite(v))
    kept = [json.loads(line) for line in path.read_bytes().splitlines()]   # the file the resumed run goes on
    assert [rec["iteration"] for rec in kept] == [rec["iteration"] for rec in log.records]   # whole JSON lines
    for line, rec in zip(kept, log.records):   # memory keeps the numbers the chart, last() and best() read
        assert all(line[k] == v for k, v in rec.items())
    return log


@FUZZ
@given(data=mutated(SEED_LOG))
def test_training_log_reader(tmp_path, data):
    """The JSON-lines training log read back on resume: the lines that are JSON objects of an iteration up to
    the one resumed from are kept, the rest dropped; the file is rewritten whole; the last and best values
    are finite numbers or None. Never an exception."""
    path = tmp_path / "x_train.jsonl"
    path.write_bytes(data)
    _check_log(path, 4)


@settings(max_examples=max(10, EXAMPLES // 6), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mutated(SEED_LOG))
def test_training_chart_from_a_fuzzed_log(tmp_path, data):
    """The chart drawn from what a fuzzed log keeps (fewer inputs: drawing takes a tenth of a second)."""
    pytest.importorskip("matplotlib")
    from pydarknet.chart import draw_chart

    path = tmp_path / "x_train.jsonl"
    path.write_bytes(data)
    log = _check_log(path, 6)
    out = tmp_path / "chart.png"
    draw_chart(str(out), log.records, 10, title="x", hours_left=0.5, size=(3, 2), dpi=50)
    assert out.read_bytes().startswith(b"\x89PNG")


def _seed_images():
    import cv2

    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    return {ext: cv2.imencode(ext, img)[1].tobytes() for ext in (".jpg", ".png", ".bmp")}


SEED_IMAGES = _seed_images()


@FUZZ
@given(st.data())
def test_image_readers(tmp_path, data):
    """Mutated JPEG, PNG and BMP files through the three image readers: the dataset's (an image, or None with
    a corrupt_image issue), the command line's (an image, or CliError) and the Python API's (an image, or
    DarknetError). Each decodes the same bytes the same way."""
    from pydarknet.commands import CliError, read_image as cli_read
    from pydarknet.data.lists import read_image as data_read
    from pydarknet.network import _read_image as api_read

    ext = data.draw(st.sampled_from(sorted(SEED_IMAGES)))
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(data.draw(mutated(SEED_IMAGES[ext])))
    for channels in (3, 1):
        img, issue = data_read(str(path), channels)
        try:
            cli = cli_read(str(path), channels)
        except CliError as e:
            cli = None
            assert str(path) in str(e)
        try:
            api = api_read(str(path), channels)
        except DarknetError as e:
            api = None
            assert str(path) in str(e)
        if img is None:
            assert issue is not None and issue.kind == "corrupt_image" and cli is None and api is None
        else:
            assert issue is None and img.dtype == np.uint8 and img.ndim == (3 if channels == 3 else 2)
            assert np.array_equal(img, cli) and np.array_equal(img, api)
