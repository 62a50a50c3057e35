"""`pydarknet classifier train|predict|valid` and Network.classify on the
project's classification shapes (pydarknet.data.shapes) with
cfg/shapes-classifier.cfg: darknet's image preparation against a NumPy
version of it, training that learns, the output formats, accuracies checked
against an independent count, and bad input.

Folder and test names here avoid the class names (square, circle,
triangle): darknet takes every class name found in an image's path."""
import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet._native import ffi, lib
from pydarknet.classifier import ClassifierError, top_k, train_classifier
from pydarknet.cli import main
from pydarknet.data.shapes import make_shapes_classification
from pydarknet.synthetic import SHAPES

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg" / "shapes-classifier.cfg"

TRAIN_LINE = re.compile(r"^(\d+), (\d+\.\d{3}): (\d+\.\d{6}), (\d+\.\d{6}) avg, (\d+\.\d{6}) rate, "
                        r"\d+\.\d{6} seconds, (\d+) images, \d+\.\d{6} hours left$")
PREDICT_HEAD = re.compile(r"^(.+): Predicted in \d+\.\d{6} milli-seconds\.$")
PREDICT_LINE = re.compile(r"^([ \d]\d\.\d\d)%: (\w+)$")
VALID_LINE = re.compile(r"^(\d+): top 1: (\d\.\d{6}), top (\d+): (\d\.\d{6})$")


# ----------------------------------------------------------------------------- a NumPy reference

def darknet_resize(im, w, h):
    """darknet's resize_image on float32 [C, H, W]: columns, then rows,
    sampling at x * (in - 1) / (out - 1), in single precision."""
    c, ih, iw = im.shape
    ws, hs = np.float32(iw - 1) / np.float32(w - 1), np.float32(ih - 1) / np.float32(h - 1)
    part = np.empty((c, ih, w), np.float32)
    for col in range(w):
        if col == w - 1 or iw == 1:
            part[:, :, col] = im[:, :, iw - 1]
        else:
            sx = np.float32(col) * ws
            ix = int(sx)
            dx = sx - np.float32(ix)
            part[:, :, col] = (np.float32(1) - dx) * im[:, :, ix] + dx * im[:, :, ix + 1]
    out = np.empty((c, h, w), np.float32)
    for row in range(h):
        sy = np.float32(row) * hs
        iy = int(sy)
        dy = sy - np.float32(iy)
        out[:, row] = (np.float32(1) - dy) * part[:, iy]
        if row != h - 1 and ih != 1:
            out[:, row] += dy * part[:, iy + 1]
    return out


def darknet_classifier_input(bgr, net_w, net_h):
    """darknet's predict_classifier preparation: RGB 0..1, resize_min(net_w),
    then crop_image at the centre (C division) with edge rows and columns
    repeated outside."""
    im = (bgr[:, :, ::-1].astype(np.float32) / np.float32(255)).transpose(2, 0, 1)
    _, h, w = im.shape
    if w < h:
        rw, rh = net_w, (h * net_w) // w
    else:
        rw, rh = (w * net_w) // h, net_w
    resized = im if (rw, rh) == (w, h) else darknet_resize(im, rw, rh)
    dx, dy = int((rw - net_w) / 2), int((rh - net_h) / 2)
    rows = np.clip(np.arange(net_h) + dy, 0, rh - 1)
    cols = np.clip(np.arange(net_w) + dx, 0, rw - 1)
    return resized[:, rows][:, :, cols]


def class_of(path):
    return next(k for k, name in enumerate(SHAPES) if name in os.path.basename(path))


@pytest.mark.parametrize("img_hw,net_wh", [((30, 50), (16, 16)), ((50, 30), (16, 16)), ((21, 21), (16, 16)),
                                           ((40, 60), (24, 40)), ((16, 16), (16, 16))])
def test_crop_input_matches_darknet_preparation(write_cfg, img_hw, net_wh):
    w, h = net_wh
    net = pydarknet.load(write_cfg(f"[net]\nwidth={w}\nheight={h}\nchannels=3\n[empty]\n"))
    img = np.random.default_rng(sum(img_hw)).integers(0, 256, img_hw + (3,), dtype=np.uint8)
    assert lib.dn_net_set_input_image_crop(net._ptr, 0, ffi.from_buffer("uint8_t[]", img), img_hw[1], img_hw[0],
                                           3, img.strides[0], 1) == lib.DN_OK
    assert lib.dn_net_forward_input(net._ptr) == lib.DN_OK
    # float32 sums of two or three products: a few ulps of values in 0..1
    np.testing.assert_allclose(net.layers[0].output[0], darknet_classifier_input(img, w, h), atol=2e-6, rtol=0)


def test_top_k_orders_as_darknet():
    # by value, largest first; equal values keep index order (0.2 at 0 before 0.2 at 2)
    assert top_k([0.2, 0.5, 0.2, 0.1], 3).tolist() == [1, 0, 2]
    assert top_k([0.2, 0.5, 0.2, 0.1], 9).tolist() == [1, 0, 2, 3]


def test_classify_returns_the_softmax_of_the_cropped_image():
    net = pydarknet.load(CFG, names=list(SHAPES), seed=3)
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    result = net.classify(img, top=5)
    (probs,) = net.predict(darknet_classifier_input(img, 32, 32))
    probs = probs.reshape(-1)
    assert [c.class_id for c in result] == list(np.argsort(-probs, kind="stable"))   # 3 classes: top capped
    assert [c.name for c in result] == [SHAPES[c.class_id] for c in result]
    np.testing.assert_allclose([c.probability for c in result], probs[[c.class_id for c in result]], rtol=1e-5)
    assert sum(c.probability for c in result) == pytest.approx(1.0, abs=1e-5)
    assert len(net.classify(img, top=1)) == 1


def test_classify_refuses_a_detector(write_cfg):
    net = pydarknet.load(write_cfg("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=18\nsize=1\n"
                                   "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nclasses=1\nnum=3\n"))
    with pytest.raises(ClassifierError, match=r"\[yolo\] layer .*detection network"):
        net.classify(np.zeros((32, 32, 3), np.uint8))


# ----------------------------------------------------------------------------- train, predict, valid

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The shapes classification set (240 training, 60 held-out images) and
    cfg/shapes-classifier.cfg trained 40 iterations with -topk through the
    command line; its stdout."""
    root = tmp_path_factory.mktemp("cls")
    data = make_shapes_classification(root / "set", train=240, valid=60, size=32, seed=1)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["classifier", "train", data, str(CFG), "-topk", "--max-batches", "40", "-dont_show"])
    finally:
        os.chdir(cwd)
    assert rc == 0, err.getvalue()
    return {"root": root, "data": data, "backup": root / "set" / "backup", "stdout": out.getvalue(),
            "weights": str(root / "set" / "backup" / "shapes-classifier_final.weights")}


def test_training_learns_and_writes_darknets_files(trained):
    lines = trained["stdout"].splitlines()
    assert lines[:3] == ["shapes-classifier", "Learning Rate: 0.003, Momentum: 0.9, Decay: 0.0005", "240"]
    iters = [TRAIN_LINE.match(l) for l in lines if TRAIN_LINE.match(l)]
    assert [int(m.group(1)) for m in iters] == list(range(1, 41))
    # epoch = images seen / training images; images = iteration * batch 32
    assert all(int(m.group(6)) == 32 * int(m.group(1)) for m in iters)
    assert all(m.group(2) == f"{32 * int(m.group(1)) / 240:.3f}" for m in iters)
    bk = trained["backup"]
    for name in ("shapes-classifier_final.weights", "shapes-classifier_last.weights", "shapes-classifier_last.state",
                 "shapes-classifier_train.jsonl", "chart_shapes-classifier.png"):
        assert (bk / name).is_file(), name
    records = [json.loads(l) for l in (bk / "shapes-classifier_train.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # -topk: once, at the end (before 2 epochs / burn_in / 100 iterations); k = top=5 capped at 3 classes
    evaluated = [r for r in records if "top1" in r]
    assert [r["iteration"] for r in evaluated] == [40] and evaluated[0]["top3"] == 1.0
    assert f" accuracy top3 = {1.0:f} " in lines
    assert evaluated[0]["top1"] >= 0.6   # chance is 1/3
    assert f" accuracy top1 = {evaluated[0]['top1']:f} " in lines


def test_predict_prints_top_classes_with_names(trained, capsys):
    image = str(trained["root"] / "set" / "valid" / sorted(os.listdir(trained["root"] / "set" / "valid"))[0])
    for args, top in ((["-t", "2"], 2), ([], 3), (["-top", "1"], 1)):
        # cfg first this time: the two files are told apart by content
        assert main(["classifier", "predict", str(CFG), trained["data"], trained["weights"], image] + args) == 0
        lines = capsys.readouterr().out.splitlines()
        assert PREDICT_HEAD.match(lines[0]).group(1) == image
        found = [PREDICT_LINE.match(l) for l in lines[1:]]
        assert len(found) == top and all(found)
        net = pydarknet.load(CFG, trained["weights"])
        (probs,) = net.predict(darknet_classifier_input(cv2.imread(image), 32, 32))
        probs = probs.reshape(-1)
        order = np.argsort(-probs, kind="stable")[:top]
        assert [m.group(2) for m in found] == [SHAPES[i] for i in order]
        assert [m.group(1) for m in found] == [f"{probs[i] * 100:5.2f}" for i in order]


def test_predict_reads_paths_from_stdin_and_reports_missing_ones(trained, capsys, monkeypatch):
    valid = trained["root"] / "set" / "valid"
    paths = [str(valid / n) for n in sorted(os.listdir(valid))[:2]]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{paths[0]}\nnowhere.png\n{paths[1]}\n"))
    assert main(["classifier", "predict", trained["data"], str(CFG), trained["weights"], "-t", "1"]) == 1
    out, err = capsys.readouterr()
    assert [m.group(1) for m in map(PREDICT_HEAD.match, out.splitlines()) if m] == paths
    assert "nowhere.png: cannot open image file" in err


def test_valid_prints_running_accuracy_matching_an_independent_count(trained, capsys):
    assert main(["classifier", "valid", trained["data"], str(CFG), trained["weights"]]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:2] == [" TOP calculation...", ""]
    rows = [VALID_LINE.match(l) for l in lines[2:]]
    assert all(rows) and [int(m.group(1)) for m in rows] == list(range(60))
    assert {m.group(3) for m in rows} == {"3"}    # top=5 in the .data file, capped at 3 classes
    assert all(m.group(4) == "1.000000" for m in rows)
    # top 1, counted here from the network's outputs on darknet's preparation of each image
    net = pydarknet.load(CFG, trained["weights"])
    listed = (trained["root"] / "set" / "valid.txt").read_text().split()
    hits = 0
    for i, rel in enumerate(listed):
        path = str(trained["root"] / "set" / rel)
        (probs,) = net.predict(darknet_classifier_input(cv2.imread(path), 32, 32))
        hits += int(np.argmax(probs.reshape(-1))) == class_of(path)
        assert rows[i].group(2) == f"{hits / (i + 1):f}"
    assert "60 images of" in err and f"top-1 {hits / 60 * 100:.2f} %" in err


def test_valid_with_top_two_and_a_list_with_missing_and_unlabelled_images(trained, capsys, caplog, tmp_path):
    set_dir = trained["root"] / "set"
    listed = (set_dir / "valid.txt").read_text().split()[:10]
    shutil.copy(set_dir / listed[0], tmp_path / "unnamed.png")
    (tmp_path / "list.txt").write_text("\n".join([str(set_dir / p) for p in listed[:5]] + ["gone/missing.png"] +
                                                 [str(tmp_path / "unnamed.png")] + [str(set_dir / p) for p in listed[5:]]))
    data = tmp_path / "two.data"
    data.write_text(f"classes = 3\nvalid = list.txt\nlabels = {set_dir / 'labels.txt'}\ntop = 2\n")
    assert main(["classifier", "valid", str(data), str(CFG), trained["weights"]]) == 0
    out, err = capsys.readouterr()
    rows = [m for m in map(VALID_LINE.match, out.splitlines()) if m]
    assert len(rows) == 10 and {m.group(3) for m in rows} == {"2"}
    # warnings go to the pydarknet logger (standard error when nothing else listens: pytest does)
    assert "list.txt:6: image gone/missing.png not found" in caplog.text
    assert "unnamed.png: names no class; left out" in caplog.text
    assert "10 images of" in err and "2 left out" in err
    # top 2 counted here
    net = pydarknet.load(CFG, trained["weights"])
    hits = 0
    for p in listed:
        (probs,) = net.predict(darknet_classifier_input(cv2.imread(str(set_dir / p)), 32, 32))
        hits += class_of(p) in np.argsort(-probs.reshape(-1), kind="stable")[:2]
    assert rows[-1].group(4) == f"{hits / 10:f}"


def test_training_skips_missing_images_and_resumes_exactly(tmp_path, capsys, caplog):
    data = make_shapes_classification(tmp_path / "set", train=40, valid=8, seed=2)
    listing = tmp_path / "set" / "train.txt"
    listing.write_text(listing.read_text() + "train/lost_99999.png\n")
    kw = dict(max_batches=4, seed=5, workers=0, chart=False, log=lambda line: None)
    whole = train_classifier(CFG, data, backup=tmp_path / "whole", **kw)
    assert "train.txt:41: image train/lost_99999.png not found" in caplog.text
    with pytest.raises(KeyboardInterrupt):
        train_classifier(CFG, data, backup=tmp_path / "cut", stop_after=2, **kw)
    assert "resume with 'pydarknet classifier train" in capsys.readouterr().err
    cut = train_classifier(CFG, data, tmp_path / "cut" / "shapes-classifier_last.weights", backup=tmp_path / "cut",
                           **kw)
    assert (whole.iteration, cut.start_iteration, cut.iteration) == (4, 2, 4)
    a = (tmp_path / "whole" / "shapes-classifier_final.weights").read_bytes()
    b = (tmp_path / "cut" / "shapes-classifier_final.weights").read_bytes()
    assert a == b


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_shapes_classification(tmp_path / "set", train=8, valid=4, seed=0)
    weights = tmp_path / "w.weights"
    pydarknet.load(CFG).save_weights(weights)
    return {"data": data, "weights": str(weights), "root": tmp_path}


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pydarknet: error: ")
    return err[-1]


DETECTOR = ("[net]\nwidth=32\nheight=32\nchannels=3\nbatch=2\nmax_batches=2\n[convolutional]\nfilters=18\nsize=1\n"
            "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nclasses=3\nnum=3\n")


@pytest.mark.parametrize("command", ["train", "predict", "valid"])
def test_a_detector_cfg_is_refused(small, capsys, command):
    cfg = small["root"] / "det.cfg"
    cfg.write_text(DETECTOR)
    args = ["classifier", command, small["data"], str(cfg)] + ([] if command == "train" else [small["weights"]])
    assert main(args) == 1
    line = error_line(capsys)
    assert f"{cfg}: has a [yolo] layer (line 10)" in line and "pydarknet detector" in line


def test_a_cfg_without_softmax_is_refused(small, capsys):
    cfg = small["root"] / "plain.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\nbatch=2\nmax_batches=2\n[convolutional]\nfilters=3\n"
                   "size=1\n[avgpool]\n")
    assert main(["classifier", "train", small["data"], str(cfg)]) == 1
    assert "ends in [avgpool] (line 10); a classifier cfg ends in [softmax]" in error_line(capsys)


@pytest.mark.parametrize("command", ["train", "predict", "valid"])
def test_missing_labels_file(small, capsys, command):
    os.remove(small["root"] / "set" / "labels.txt")
    args = ["classifier", command, small["data"], str(CFG)] + ([] if command == "train" else [small["weights"]])
    assert main(args) == 1
    line = error_line(capsys)
    # the path as the .data file writes it (looked up beside the .data file, then in the working folder)
    assert line == (f"pydarknet: error: labels.txt: cannot read the class names file (labels= in {small['data']}): "
                    f"No such file or directory")


def test_missing_labels_entry_names_darknets_default(small, capsys):
    data = small["root"] / "nolabels.data"
    data.write_text("classes = 3\ntrain = set/train.txt\n")
    assert main(["classifier", "train", str(data), str(CFG)]) == 1
    line = error_line(capsys)
    assert f"{data}: no 'labels = <file>' entry" in line and "default data/labels.list does not exist" in line


def test_classes_that_do_not_fit(small, capsys):
    data = Path(small["data"])
    data.write_text(data.read_text().replace("classes = 3", "classes = 4"))
    assert main(["classifier", "valid", str(data), str(CFG), small["weights"]]) == 1
    assert "classes = 4 but" in error_line(capsys)
    (small["root"] / "set" / "four.txt").write_text("square\ncircle\ntriangle\nstar\n")
    data.write_text(data.read_text().replace("labels.txt", "four.txt"))
    assert main(["classifier", "train", str(data), str(CFG)]) == 1
    assert "the last layer gives 3 outputs but there are 4 classes" in error_line(capsys)


def test_gpu_flags_without_a_device_are_one_error_line(trained, capsys, monkeypatch):
    """-gpus (train) and -i (predict, valid) reach the device choice; with no
    CUDA build or no device each command ends with one error line naming the
    flag, before any training or output."""
    if pydarknet.cuda_devices():
        pytest.skip("a CUDA device is present")
    monkeypatch.chdir(trained["root"])
    image = str(trained["root"] / "set" / "valid" / sorted(os.listdir(trained["root"] / "set" / "valid"))[0])
    cases = [(["classifier", "train", trained["data"], str(CFG), "--max-batches", "1", "-gpus", "0,1",
              "--backup", "gpu-backup"], "-gpus 0:"),
             (["classifier", "predict", trained["data"], str(CFG), trained["weights"], image, "-i", "0"], "-i 0:"),
             (["classifier", "valid", trained["data"], str(CFG), trained["weights"], "-i", "0"], "-i 0:")]
    for argv, flag in cases:
        assert main(argv) == 1
        out, err = capsys.readouterr()
        errors = [l for l in err.splitlines() if l.startswith("pydarknet: error:")]
        assert len(errors) == 1 and flag in errors[0] and "CUDA" in errors[0], err
        assert "%" not in out and "top 1" not in out
