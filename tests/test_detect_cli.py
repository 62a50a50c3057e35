"""`pydarknet detector test` over lists and folders (-out JSON, -save_labels,
--output-dir), `detector valid`, `recall` and `demo`: their files' formats,
missing images reported and skipped, and one-line errors for bad input.

The model is test_cli's 1x1 grid whose three anchors give boxes known by
hand (a 1x1 convolution with zero weights outputs its biases): on any image,
relative to it,
  box A  centre (.5, .5), size 1 x 1 (anchor 64x64 on the 64x64 input): cat sigmoid(5)^2;
  box B  centre (.5, .5), size 10/64:  objectness sigmoid(3), dog sigmoid(3), cat .247 overall;
  box C  centre (.5, .5), size 30/64:  objectness sigmoid(5), dog sigmoid(4), cat sigmoid(2).
"""
import json
import os
import re

import cv2
import numpy as np
import pytest

from test_cli import EXACT_ANCHORS, EXACT_HEAD, make_model, run, sigmoid, write_image

S5, S3 = sigmoid(5.0), sigmoid(3.0)
BOX_A = (0.5, 0.5, 1.0, 1.0)
BOX_B = (0.5, 0.5, 10 / 64, 10 / 64)
BOX_C = (0.5, 0.5, 30 / 64, 30 / 64)
# (class, box, confidence) of every detection above .001: the class scores
# not set in EXACT_HEAD are logit -5 (box A's dog) as written there
EXPECTED = [
    (0, BOX_A, S5 * S5), (1, BOX_A, S5 * sigmoid(-5.0)),
    (0, BOX_B, 0.247), (1, BOX_B, S3 * S3),
    (0, BOX_C, S5 * sigmoid(2.0)), (1, BOX_C, S5 * sigmoid(4.0)),
]
NAMES = ["cat", "dog"]


def expected(thresh):
    return [e for e in EXPECTED if e[2] > thresh]


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    files = make_model(tmp_path, 64, EXACT_ANCHORS, EXACT_HEAD)
    os.makedirs("imgs")
    files["images"] = [write_image(tmp_path / "imgs" / "a.png", 100, 200, seed=1),
                       write_image(tmp_path / "imgs" / "b.jpg", 50, 80, seed=2)]
    return files


def _one_error_line(err):
    lines = [l for l in err.strip().splitlines() if l.startswith("pydarknet: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- detector test

def test_list_with_missing_image_writes_json_labels_and_annotated_images(model, capsys, tmp_path):
    with open("list.txt", "w") as f:
        f.write("imgs/a.png\nimgs/missing.jpg\n\nimgs/b.jpg\n")
    code, out, err = run(capsys, "detector", "test", model["data"], model["cfg"], model["weights"], "list.txt",
                         "-dont_show", "-out", "result.json", "-save_labels", "--output-dir", "annotated")
    assert code == 1                                              # the missing image
    assert _one_error_line(err).endswith("imgs/missing.jpg: cannot open image file: No such file or directory")
    assert [l.split(":")[0] for l in out if "Predicted in" in l] == ["imgs/a.png", "imgs/b.jpg"]

    # darknet's JSON: one record per image processed, boxes relative to the image
    with open("result.json") as f:
        records = json.load(f)
    assert [r["frame_id"] for r in records] == [1, 2]
    assert [r["filename"] for r in records] == ["imgs/a.png", "imgs/b.jpg"]
    for r in records:
        got = sorted((o["class_id"], o["name"], tuple(o["relative_coordinates"][k] for k in
                      ("center_x", "center_y", "width", "height")), o["confidence"]) for o in r["objects"])
        want = sorted((c, NAMES[c], box, p) for c, box, p in expected(0.25))
        assert len(got) == len(want) == 4
        for g, w in zip(got, want):
            assert g[:2] == w[:2]
            assert g[2] == pytest.approx(w[2], abs=2e-6)   # float32 box, printed to 6 decimals
            assert g[3] == pytest.approx(w[3], abs=2e-6)

    # -save_labels: per box its best class, beside the image; YOLO format with 4 decimals
    for image in ("imgs/a.txt", "imgs/b.txt"):
        with open(image) as f:
            lines = f.read().splitlines()
        assert all(re.fullmatch(r"\d+ \d\.\d{4} \d\.\d{4} \d\.\d{4} \d\.\d{4}", l) for l in lines), lines
        rows = sorted(tuple(float(v) for v in l.split()) for l in lines)
        want = sorted([(0.0,) + BOX_A, (1.0,) + BOX_B, (1.0,) + BOX_C])
        assert np.allclose(rows, want, atol=5e-5)
    assert not os.path.exists("imgs/missing.txt")

    # one annotated image per input, the size of the input; no predictions.jpg
    assert sorted(os.listdir("annotated")) == ["a.jpg", "b.jpg"]
    for name, (h, w) in (("a.jpg", (100, 200)), ("b.jpg", (50, 80))):
        assert cv2.imread(os.path.join("annotated", name)).shape == (h, w, 3)
    assert not os.path.exists("predictions.jpg")
    assert not [n for n in os.listdir(".") if ".tmp." in n]


def test_folder_input_processes_every_image_in_name_order(model, capsys):
    (open("imgs/notes.txt", "w")).write("not an image\n")
    code, out, err = run(capsys, "detector", "test", model["data"], model["cfg"], model["weights"], "imgs",
                         "-dont_show", "-thresh", "0.9")
    assert code == 0, err
    assert [l.split(":")[0] for l in out if "Predicted in" in l] == [os.path.join("imgs", "a.png"),
                                                                    os.path.join("imgs", "b.jpg")]
    # above .9: cat on box A (98.7%), dog on box C (97.5%), dog on box B (90.7%)
    assert sum(1 for l in out if re.fullmatch(r"(cat|dog): \d+%", l)) == 2 * len(expected(0.9)) == 6
    assert os.path.exists("predictions.jpg")


def test_corrupt_image_in_list_is_skipped(model, capsys):
    with open("imgs/broken.jpg", "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    with open("list.txt", "w") as f:
        f.write("imgs/broken.jpg\nimgs/a.png\n")
    code, out, err = run(capsys, "detector", "test", model["data"], model["cfg"], model["weights"], "list.txt",
                         "-dont_show", "-out", "r.json")
    assert code == 1
    assert "broken.jpg: cannot decode image" in _one_error_line(err)
    with open("r.json") as f:
        assert [r["filename"] for r in json.load(f)] == ["imgs/a.png"]


def test_out_json_is_kept_when_no_image_could_be_read(model, capsys):
    with open("result.json", "w") as f:
        f.write('[{"frame_id": 1}]\n')            # an earlier run's result
    with open("list.txt", "w") as f:
        f.write("imgs/gone1.jpg\nimgs/gone2.jpg\n")
    code, out, err = run(capsys, "detector", "test", model["data"], model["cfg"], model["weights"], "list.txt",
                         "-dont_show", "-out", "result.json")
    assert code == 1
    assert "no image was processed; result.json not written" in err
    with open("result.json") as f:
        assert f.read() == '[{"frame_id": 1}]\n'


# ----------------------------------------------------------------------------- detector valid

def _valid_setup(model, lines, extra=""):
    with open("valid.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(model["data"], "a") as f:
        f.write(f"valid = valid.txt\n{extra}")


def test_valid_writes_per_class_files(model, capsys):
    _valid_setup(model, ["imgs/a.png", "imgs/nope.png", "imgs/b.jpg"])
    code, out, err = run(capsys, "detector", "valid", model["data"], model["cfg"], model["weights"], "-dont_show")
    assert code == 1 and "imgs/nope.png" in _one_error_line(err)
    assert sorted(os.listdir("results")) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    sizes = {"a": (200, 100), "b": (80, 50)}
    for k, name in enumerate(NAMES):
        with open(f"results/comp4_det_test_{name}.txt") as f:
            rows = [l.split() for l in f.read().splitlines()]
        got = sorted((r[0],) + tuple(float(v) for v in r[1:]) for r in rows)
        want = []
        for image, (w, h) in sizes.items():
            for c, (x, y, bw, bh), p in expected(0.001):
                if c != k:
                    continue
                # darknet's 1-based pixel corners, clipped to 1..w and 1..h
                xmin, xmax = max((x - bw / 2) * w + 1, 1), min((x + bw / 2) * w + 1, w)
                ymin, ymax = max((y - bh / 2) * h + 1, 1), min((y + bh / 2) * h + 1, h)
                want.append((image, p, xmin, ymin, xmax, ymax))
        want.sort()
        assert [g[0] for g in got] == [w_[0] for w_ in want]
        assert np.allclose([g[1:] for g in got], [w_[1:] for w_ in want], atol=2e-4)


def test_valid_coco_json(model, capsys, tmp_path):
    os.rename("imgs/a.png", "imgs/000000000042.png")
    os.rename("imgs/b.jpg", "imgs/COCO_val2014_000000000007.jpg")
    _valid_setup(model, ["imgs/000000000042.png", "imgs/COCO_val2014_000000000007.jpg"],
                 "eval = coco\nresults = out\n")
    code, out, err = run(capsys, "detector", "valid", model["data"], model["cfg"], model["weights"],
                         "-out", "mine")
    assert code == 0, err
    with open("out/mine.json") as f:
        records = json.load(f)
    assert {r["image_id"] for r in records} == {42, 7}
    sizes = {42: (200, 100), 7: (80, 50)}
    for image_id, (w, h) in sizes.items():
        got = sorted((r["category_id"], r["score"], *r["bbox"]) for r in records if r["image_id"] == image_id)
        want = []
        for c, (x, y, bw, bh), p in expected(0.001):
            left, top = max((x - bw / 2) * w, 0), max((y - bh / 2) * h, 0)
            right, bottom = min((x + bw / 2) * w, w), min((y + bh / 2) * h, h)
            want.append((c + 1, p, left, top, right - left, bottom - top))   # 2 classes: category = class + 1
        want.sort()
        assert [g[0] for g in got] == [w_[0] for w_ in want]
        assert np.allclose([g[1:] for g in got], [w_[1:] for w_ in want], atol=2e-4)


def test_valid_unsupported_eval_is_refused(model, capsys):
    _valid_setup(model, ["imgs/a.png"], "eval = kitti\n")
    code, out, err = run(capsys, "detector", "valid", model["data"], model["cfg"], model["weights"])
    assert code == 1 and "eval = kitti is not supported" in _one_error_line(err)


@pytest.mark.parametrize("command", ["valid", "recall"])
@pytest.mark.parametrize("lines,words", [
    (["", "# nothing listed", "  "], ["valid.txt: no image paths in this list file"]),
    (["imgs/gone.png", "imgs/gone2.png"], ["valid.txt: none of its 2 images could be read", "no results written"]),
])
def test_valid_and_recall_with_no_usable_image_keep_earlier_results(model, capsys, command, lines, words):
    _valid_setup(model, lines)
    os.makedirs("results")
    for name in NAMES:
        with open(f"results/comp4_det_test_{name}.txt", "w") as f:
            f.write("earlier 0.9 1 1 5 5\n")
    code, out, err = run(capsys, "detector", command, model["data"], model["cfg"], model["weights"])
    assert code == 1 and "Traceback" not in err
    if command == "valid" or not lines[0].startswith("imgs/"):   # recall reports each missing image instead
        line = [l for l in err.splitlines() if l.startswith("pydarknet: error:")][-1]
        for w in words:
            assert w in line, line
    for name in NAMES:
        with open(f"results/comp4_det_test_{name}.txt") as f:
            assert f.read() == "earlier 0.9 1 1 5 5\n"


@pytest.mark.parametrize("command", ["valid", "recall"])
def test_binary_valid_list_is_refused(model, capsys, command):
    with open(model["data"], "a") as f:
        f.write(f"valid = {model['weights']}\n")      # the weights file named by mistake
    code, out, err = run(capsys, "detector", command, model["data"], model["cfg"], model["weights"])
    assert code == 1 and out == []
    line = _one_error_line(err)
    assert line.startswith(f"pydarknet: error: {model['weights']}: image list: not a text file"), line


# ----------------------------------------------------------------------------- detector recall

def test_recall_lines(model, capsys):
    # a.png: one truth covering the image (found by box A, IoU 1) and one small box in a corner
    # (IoU .01 at best, with box A: .1 x .1 inside the 1 x 1 box); b.jpg: no label file
    with open("imgs/a.txt", "w") as f:
        f.write("0 0.5 0.5 1 1\n1 0.2 0.2 0.1 0.1\n")
    _valid_setup(model, ["imgs/a.png", "imgs/gone.png", "imgs/b.jpg"])
    code, out, err = run(capsys, "detector", "recall", model["data"], model["cfg"], model["weights"], "-dont_show")
    assert code == 1 and "imgs/gone.png" in _one_error_line(err)
    # the three boxes' objectness exceed .001 and no two overlap by more than .4: 3 proposals per image
    assert out == ["    0     1     2\tRPs/Img: 3.00\tIOU: 50.50%\tRecall:50.00%",
                   "    2     1     2\tRPs/Img: 3.00\tIOU: 50.50%\tRecall:50.00%"]
    assert "imgs/b.txt" in err   # the missing label file is noted


# ----------------------------------------------------------------------------- detector demo

def _write_video(path, frames=8, size=96, fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size, size, 3), 20 * i, np.uint8))
    writer.release()
    return str(path)


def _video_info(path):
    cap = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count += 1
        size = frame.shape
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return count, size, fps


def test_demo_writes_annotated_video_json_and_fps(model, capsys):
    video = _write_video("in.avi")
    code, out, err = run(capsys, "detector", "demo", model["data"], model["cfg"], model["weights"], video,
                         "-dont_show", "-out_filename", "out.avi", "-json_file_output", "frames.json",
                         "-prefix", "frame")
    assert code == 0, err
    count, shape, fps = _video_info("out.avi")
    assert (count, shape) == (8, (96, 96, 3))
    assert fps == pytest.approx(10)
    assert out.count("Objects:") == 8
    assert len(re.findall(r"^FPS:\d+\.\d \t AVG_FPS:\d+\.\d$", err, re.M)) == 8
    with open("frames.json") as f:
        frames = json.load(f)
    assert [r["frame_id"] for r in frames] == list(range(1, 9))
    assert all("filename" not in r and len(r["objects"]) == len(expected(0.25)) for r in frames)
    assert sorted(n for n in os.listdir(".") if n.startswith("frame_")) == [f"frame_{i:08d}.jpg" for i in range(1, 9)]


def test_demo_latest_frame_mode_on_a_file_never_repeats_frames(model, capsys):
    video = _write_video("in.avi", frames=12)
    code, out, err = run(capsys, "detector", "demo", model["data"], model["cfg"], model["weights"], video,
                         "-dont_show", "--frames", "latest", "-out_filename", "out.avi")
    assert code == 0, err
    done = int(re.search(r"(\d+) frames in", err).group(1))
    dropped = int(re.search(r"(\d+) dropped while busy", err).group(1))
    assert done + dropped == 12 and 1 <= done <= 12
    assert _video_info("out.avi")[0] == done


def test_demo_bad_video(model, capsys):
    with open("bad.avi", "wb") as f:
        f.write(b"not a video at all" * 50)
    for video, words in (("missing.avi", "No such file"), ("bad.avi", "cannot open video")):
        code, out, err = run(capsys, "detector", "demo", model["data"], model["cfg"], model["weights"], video,
                             "-dont_show")
        assert code == 1
        line = _one_error_line(err)
        assert video in line and words in line


def test_demo_video_without_frames_keeps_an_earlier_json(model, capsys):
    _write_video("empty.avi", frames=0)          # opens, yields no frame
    with open("frames.json", "w") as f:
        f.write("[{}]\n")
    code, out, err = run(capsys, "detector", "demo", model["data"], model["cfg"], model["weights"], "empty.avi",
                         "-dont_show", "-json_file_output", "frames.json")
    assert code == 1
    assert "empty.avi: no frame could be read" in _one_error_line(err)
    with open("frames.json") as f:
        assert f.read() == "[{}]\n"
    assert not [n for n in os.listdir(".") if ".tmp." in n]


# ----------------------------------------------------------------------------- networks without a detection head

CLASSIFIER = """[net]
width=32
height=32
channels=3

[convolutional]
filters=2
size=1
stride=1
activation=linear

[avgpool]

[softmax]
"""

NO_HEAD = """[net]
width=32
height=32
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.mark.parametrize("text,words", [(CLASSIFIER, ["ends in [softmax]", "classifier"]),
                                        (NO_HEAD, ["ends in [convolutional]"])], ids=["classifier", "no head"])
@pytest.mark.parametrize("command", ["test", "valid", "recall", "demo"])
def test_detector_commands_refuse_a_network_without_detection_head(model, capsys, text, words, command):
    import pydarknet

    with open("other.cfg", "w") as f:
        f.write(text)
    pydarknet.load("other.cfg").save_weights("other.weights")
    _valid_setup(model, ["imgs/a.png"])
    extra = {"test": ["imgs/a.png"], "demo": [_write_video("in.avi", frames=2)]}.get(command, [])
    flags = ["-dont_show"] if command in ("test", "demo") else []
    code, out, err = run(capsys, "detector", command, model["data"], "other.cfg", "other.weights", *extra, *flags)
    assert code == 1
    line = _one_error_line(err)
    assert "other.cfg" in line and "no [yolo] or [region] layer" in line and f"detector {command}" in line
    for w in words:
        assert w in line
    assert not os.path.exists("results")
