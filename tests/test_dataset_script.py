"""scripts/make_dataset.py writes the bundled shapes dataset in darknet's
layout, readable by the data pipeline, with disjoint splits and the same
bytes for the same seed; cfg/shapes.cfg trains on it (scripts/train_shapes.py)."""
import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet.data import DetectionDataset, DetectionLoader, label_path, read_labels
from pydarknet.datafiles import load_data_file, read_names
from pydarknet.synthetic import SHAPES

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg" / "shapes.cfg"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_dataset = _script("make_dataset")
train_shapes = _script("train_shapes")


def _make(folder, *args):
    assert make_dataset.main([str(folder), "--train", "6", "--valid", "4", *args]) == 0
    return Path(folder)


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("shapes") / "ds", "--size", "96x64", "--seed", "5", "--sample", "160x128")


def test_layout(dataset):
    for name in ("shapes.data", "shapes.names", "train.txt", "valid.txt", "sample.jpg", "sample.txt"):
        assert (dataset / name).is_file(), name
    assert cv2.imread(str(dataset / "sample.jpg")).shape == (128, 160, 3)
    boxes, issues = read_labels(dataset / "sample.txt", classes=len(SHAPES))
    assert not issues and 3 <= len(boxes) <= 4
    assert (dataset / "backup").is_dir()
    assert read_names(dataset / "shapes.names") == list(SHAPES)
    assert read_names(ROOT / "data" / "shapes.names") == list(SHAPES)
    df = load_data_file(dataset / "shapes.data")
    assert df.classes == len(SHAPES)
    assert Path(df.train) == dataset / "train.txt" and Path(df.valid) == dataset / "valid.txt"
    assert Path(df.names_path) == dataset / "shapes.names" and Path(df.backup) == dataset / "backup"
    for split, count in (("train", 6), ("valid", 4)):
        lines = (dataset / f"{split}.txt").read_text().splitlines()
        assert len(lines) == count
        for line in lines:
            assert line.startswith(f"images/{split}/") and line.endswith(".jpg")   # relative to the .data file
            image = dataset / line
            assert cv2.imread(str(image)).shape == (64, 96, 3)
            # the labels sit where darknet's replace_image_to_label looks: beside the image
            assert Path(label_path(str(image))) == image.with_suffix(".txt")
            assert image.with_suffix(".txt").is_file()


def test_labels_parse_with_the_reader(dataset):
    for split in ("train", "valid"):
        ds = DetectionDataset.from_data(dataset / "shapes.data", key=split)
        assert len(ds) == (6 if split == "train" else 4) and not any(ds.summary.counts.values())
        for i in range(len(ds)):
            assert Path(ds.label_file(i)) == Path(ds.images[i]).with_suffix(".txt")
            boxes, issues = read_labels(ds.label_file(i), classes=len(SHAPES))
            assert not issues and 1 <= len(boxes) <= 4
            assert set(boxes[:, 0].astype(int)) <= {0, 1, 2}
            x, y, w, h = boxes[:, 1:].T
            assert np.all((x - w / 2 >= 0) & (x + w / 2 <= 1) & (y - h / 2 >= 0) & (y + h / 2 <= 1))
            assert np.all(w * 96 >= 7) and np.all(h * 64 >= 7)


def test_splits_do_not_overlap(dataset):
    train = set((dataset / "train.txt").read_text().split())
    valid = set((dataset / "valid.txt").read_text().split())
    assert not train & valid
    pixels = lambda names: {hashlib.sha256(cv2.imread(str(dataset / n)).tobytes()).hexdigest() for n in names}
    assert not pixels(train) & pixels(valid)


def test_same_seed_same_bytes(tmp_path, dataset):
    again = _make(tmp_path / "again", "--size", "96x64", "--seed", "5", "--sample", "160x128")
    assert _digest(again) == _digest(dataset)
    other = _make(tmp_path / "other", "--size", "96x64", "--seed", "6", "--sample", "160x128")
    a, b = _digest(other), _digest(dataset)
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a if k.endswith(".jpg"))
    pixels = lambda folder, split: {hashlib.sha256(cv2.imread(str(p)).tobytes()).hexdigest()
                                    for p in (folder / "images" / split).glob("*.jpg")}
    assert not pixels(other, "train") & pixels(dataset, "train")


def test_bad_arguments(tmp_path):
    for args in (["--size", "128"], ["--train", "0"], ["--size", "8x8"]):
        with pytest.raises(SystemExit):
            make_dataset.main([str(tmp_path / "x"), *args])
    assert make_dataset.main([str(tmp_path / "y"), "--backgrounds", str(tmp_path / "missing.jpg")]) == 1


def test_cfg_fits_the_dataset(dataset):
    net = pydarknet.load(CFG, names=ROOT / "data" / "shapes.names")
    heads = [l for l in net.layers if l.type == "yolo"]
    assert heads and all(l.spec.attrs["classes"] == len(SHAPES) for l in heads)
    with DetectionLoader.from_files(dataset / "shapes.data", net, seed=0, workers=0) as loader:
        x, t = loader.batch(0)
    assert x.shape == (net.full_batch, 3, net.height, net.width)
    assert (t[:, :, 2] > 0).sum(axis=1).min() >= 1   # every image keeps its shapes after augmentation


def test_train_script_runs(dataset, capsys):
    weights = dataset / "backup" / "t.weights"
    assert train_shapes.main(["--cfg", str(CFG), "--data", str(dataset / "shapes.data"), "--iterations", "2",
                              "--print", "1", "--weights", str(weights), "--workers", "0",
                              "--predict", str(dataset / "sample.jpg")]) == 0
    out = capsys.readouterr().out
    assert "    2: loss" in out and "mAP@0.5 = " in out and "annotated picture:" in out
    assert weights.is_file() and (dataset / "backup" / "predictions.jpg").is_file()
    net = pydarknet.load(CFG, weights)
    assert net.seen == 2 * net.full_batch
    # seeded: the same seed trains to the same weights, another seed to others
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        runs[name] = dataset / "backup" / f"{name}.weights"
        assert train_shapes.main(["--cfg", str(CFG), "--data", str(dataset / "shapes.data"), "--iterations", "2",
                                  "--weights", str(runs[name]), "--workers", "0", "--seed", seed]) == 0
    assert runs["a"].read_bytes() == runs["b"].read_bytes() != runs["c"].read_bytes()
