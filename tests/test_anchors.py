"""`detector calc_anchors`: k-means with the 1 - IoU distance on label sizes
with known clusters, determinism, darknet's output lines and files on the
bundled shapes data, the cfg copy with new anchors, and bad input."""
import glob
import os
import re

import numpy as np
import pytest

from pydarknet.anchors import AnchorsError, average_iou, cfg_with_anchors, kmeans_anchors, wh_iou
from pydarknet.cfg import parse_cfg
from pydarknet.cli import main
from pydarknet.data.shapes import default_backgrounds, make_shapes_dataset
from conftest import ROOT

CFG = """[net]
width=96
height=64
channels=3

[convolutional]
filters=24
size=1
activation=linear

# first head
[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=3
num=6

[route]
layers=-2

[convolutional]
filters=24
size=1
activation=linear

[yolo]
mask = 0,1,2
classes=3
num=6
"""

ANCHORS_LINE = re.compile(r"^anchors = ((?: *\d+, *\d+)(?:, (?: *\d+, *\d+))*)$")


def test_wh_iou_by_hand():
    # 10x20 and 20x10 sharing a centre: intersection 10x10 = 100, union 200 + 200 - 100
    assert wh_iou([[10, 20]], [[20, 10], [10, 20], [5, 5]])[0] == pytest.approx([1 / 3, 1.0, 25 / 200])


def _three_groups(rng):
    centres = np.array([[20.0, 30.0], [90.0, 60.0], [210.0, 230.0]])
    groups = [c * np.exp(rng.normal(0, 0.03, (40 + 10 * i, 2))) for i, c in enumerate(centres)]
    return groups, np.concatenate(groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_finds_known_clusters(seed):
    groups, wh = _three_groups(np.random.default_rng(100 + seed))
    anchors, cluster, steps = kmeans_anchors(np.random.default_rng(seed).permutation(wh), 3, seed=seed)
    # each anchor is the mean size of one group (k-means' fixed point with these groups), smallest first
    assert anchors == pytest.approx(np.array([g.mean(axis=0) for g in groups]), rel=1e-12)
    assert 1 <= steps < 20 and sorted(np.bincount(cluster)) == [40, 50, 60]
    # average IoU: every box against its group's mean, computed directly
    direct = np.mean([_iou_same_centre(b, g.mean(axis=0)) for g in groups for b in g])
    assert average_iou(wh, anchors) == pytest.approx(direct, rel=1e-12) and direct > 0.9


def _iou_same_centre(a, b):
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def test_kmeans_is_deterministic_and_one_cluster_is_the_mean():
    wh = np.random.default_rng(5).uniform(5, 300, (500, 2))
    a1, c1, _ = kmeans_anchors(wh, 9, seed=3)
    a2, c2, _ = kmeans_anchors(wh, 9, seed=3)
    assert np.array_equal(a1, a2) and np.array_equal(c1, c2)
    areas = a1[:, 0] * a1[:, 1]
    assert np.all(np.diff(areas) > 0)
    # Lloyd's fixed point: every anchor is the mean of the boxes that overlap it most
    nearest = np.argmax(wh_iou(wh, a1), axis=1)
    assert np.array_equal(nearest, c1)
    for j in range(9):
        assert a1[j] == pytest.approx(wh[c1 == j].mean(axis=0), rel=1e-12)
    single, _, _ = kmeans_anchors(wh, 1)
    assert single[0] == pytest.approx(wh.mean(axis=0), rel=1e-12)


def test_kmeans_refuses_too_few_sizes():
    with pytest.raises(AnchorsError, match="3 boxes are too few for 4"):
        kmeans_anchors(np.ones((3, 2)), 4)
    with pytest.raises(AnchorsError, match="only 2 different box sizes for 3"):
        kmeans_anchors([[1, 1], [1, 1], [2, 3], [2, 3]], 3)


# ----------------------------------------------------------------------------- the command

@pytest.fixture
def shapes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_shapes_dataset(tmp_path, train=12, valid=2, width=64, height=64, sample=None,
                        backgrounds=default_backgrounds(ROOT / "data"))
    (tmp_path / "tiny.cfg").write_text(CFG)
    return tmp_path


def _label_sizes(root, width, height):
    """(w, h) in pixels and boxes per class, read straight from the label
    files, boxes partly outside the image clipped to it as for training."""
    wh, counts = [], np.zeros(3, int)
    for path in sorted(glob.glob(str(root / "images" / "train" / "*.txt"))):
        for k, x, y, w, h in np.loadtxt(path, ndmin=2):
            w = min(x + w / 2, 1) - max(x - w / 2, 0)
            h = min(y + h / 2, 1) - max(y - h / 2, 0)
            wh.append((w * width, h * height))
            counts[int(k)] += 1
    return np.array(wh), counts


def test_calc_anchors_on_the_shapes_data(shapes, capsys):
    assert main(["detector", "calc_anchors", "shapes.data", "-num_of_clusters", "4", "-width", "416",
                 "-height", "320"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    wh, counts = _label_sizes(shapes, 416, 320)
    assert lines[0] == " num_of_clusters = 4, width = 416, height = 320"
    assert " read labels from 12 images" in lines and f" loaded \t image: 12 \t box: {len(wh)}" in lines
    assert f"counters_per_class = {', '.join(map(str, counts))}" in lines
    found = [ANCHORS_LINE.match(line) for line in lines if ANCHORS_LINE.match(line)]
    assert len(found) == 1
    anchors = np.array([float(v) for v in found[0].group(1).split(",")]).reshape(-1, 2)
    assert anchors.shape == (4, 2)
    with open("anchors.txt") as f:
        assert f.read() == found[0].group(1)
    with open("counters_per_class.txt") as f:
        assert f.read() == f"counters_per_class = {', '.join(map(str, counts))}"
    # the same k-means on the sizes read straight from the label files (float64 here, float32 in the
    # reader): the printed anchors are those rounded to whole pixels, the average IoU that of the
    # unrounded ones
    expected, _, steps = kmeans_anchors(wh, 4, seed=0)
    assert np.abs(anchors - expected).max() <= 0.5 + 1e-3
    assert f" iterations = {steps}" in lines
    avg = float(re.search(r"^ avg IoU = (\d+\.\d\d) %$", out, re.M).group(1))
    assert avg == pytest.approx(100 * average_iou(wh, expected), abs=0.0051) and avg > 60
    # deterministic: the same output again
    assert main(["detector", "calc_anchors", "shapes.data", "-num_of_clusters", "4", "-width", "416",
                 "-height", "320"]) == 0
    assert capsys.readouterr().out == out


def test_small_width_prints_fractions(shapes, capsys):
    assert main(["detector", "calc_anchors", "shapes.data", "-num_of_clusters", "2", "-width", "13",
                 "-height", "13"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("anchors = ")][0]
    assert re.fullmatch(r"anchors = \d+\.\d{4},\d+\.\d{4}, \d+\.\d{4},\d+\.\d{4}", line), line


def test_cfg_copy_with_new_anchors(shapes, capsys):
    assert main(["detector", "calc_anchors", "shapes.data", "-cfg", "tiny.cfg", "-out_cfg", "new.cfg"]) == 0
    out, err = capsys.readouterr()
    # size and number of anchors from the cfg: 96 x 64, num=6
    assert out.startswith(" num_of_clusters = 6, width = 96, height = 64")
    text = [line for line in out.splitlines() if line.startswith("anchors = ")][0][len("anchors = "):]
    anchors = [float(v) for v in text.split(",")]
    new = parse_cfg("new.cfg")
    heads = [layer for layer in new.layers if layer.type == "yolo"]
    assert len(heads) == 2
    for layer in heads:
        assert layer.attrs["anchors"] == anchors and layer.attrs["num"] == 6
    # every other line as it was; the second head gets anchors= and num= after its header
    old_lines = CFG.split("\n")
    new_lines = (shapes / "new.cfg").read_text().split("\n")
    assert [line for line in new_lines if not line.startswith("anchors")] == \
        [line for line in old_lines if not line.startswith("anchors")]
    assert new_lines[new_lines.index("[yolo]", new_lines.index("[route]")) + 1] == f"anchors = {text}"
    assert "new.cfg" in err


def test_cfg_copy_keeps_windows_line_ends(shapes, tmp_path):
    (tmp_path / "crlf.cfg").write_bytes(CFG.replace("\n", "\r\n").encode())
    text = cfg_with_anchors("crlf.cfg", "1,2, 3,4, 5,6, 7,8, 9,10, 11,12", 6)
    assert "anchors = 1,2, 3,4, 5,6, 7,8, 9,10, 11,12\r\n" in text and "\n" not in text.replace("\r\n", "")


def _one_error(capsys, rc, status, *texts):
    out, err = capsys.readouterr()
    assert rc == status, err
    lines = [line for line in err.splitlines() if line.startswith("pydarknet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in lines[0], lines[0]


def test_errors(shapes, capsys):
    rc = main(["detector", "calc_anchors", "shapes.data", "-cfg", "tiny.cfg", "-out_cfg", "x.cfg",
               "-num_of_clusters", "5"])
    _one_error(capsys, rc, 1, f"tiny.cfg:{CFG.split(chr(10)).index('[yolo]') + 1}:", "mask=3,4,5", "5 anchors")
    assert not os.path.exists("x.cfg")
    _one_error(capsys, main(["detector", "calc_anchors", "shapes.data"]), 2, "-width")
    _one_error(capsys, main(["detector", "calc_anchors", "shapes.data", "-out_cfg", "x.cfg", "-width", "9",
                             "-height", "9"]), 2, "-out_cfg needs -cfg")
    _one_error(capsys, main(["detector", "calc_anchors", "missing.data", "-width", "9", "-height", "9"]), 1,
               "missing.data")
    _one_error(capsys, main(["detector", "calc_anchors", "shapes.data", "-width", "9", "-height", "9",
                             "-num_of_clusters", "1000"]), 1, "shapes.data", "too few for 1000")
    (shapes / "empty.cfg").write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n")
    _one_error(capsys, main(["detector", "calc_anchors", "shapes.data", "-cfg", "empty.cfg", "-out_cfg", "x.cfg",
                             "-num_of_clusters", "3"]), 1, "empty.cfg: no [yolo] section")


def test_failed_cfg_write_keeps_the_cfg(shapes, capsys, monkeypatch):
    # -out_cfg over the cfg itself, the write failing at the last step: the cfg stays whole
    before = (shapes / "tiny.cfg").read_bytes()

    real_replace = os.replace

    def fail(src, dst):
        if os.path.basename(dst) != "tiny.cfg":
            return real_replace(src, dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    rc = main(["detector", "calc_anchors", "shapes.data", "-cfg", "tiny.cfg", "-out_cfg", "tiny.cfg"])
    _one_error(capsys, rc, 1, "tiny.cfg: cannot write: No space left on device")
    assert (shapes / "tiny.cfg").read_bytes() == before
    assert not [p.name for p in shapes.iterdir() if ".tmp." in p.name]


def test_bad_label_lines_and_missing_images_are_reported(shapes, capsys, caplog):
    label = shapes / "images" / "train" / "train_00003.txt"
    label.write_text(label.read_text() + "1 0.5 0.5 wide 0.2\n7 0.5 0.5 0.1 0.1\n")
    n_lines = len(label.read_text().splitlines())
    with open(shapes / "train.txt", "a") as f:
        f.write("images/train/gone.jpg\n")
    assert main(["detector", "calc_anchors", "shapes.data", "-num_of_clusters", "3", "-width", "64",
                 "-height", "64"]) == 0
    out = capsys.readouterr().out
    # warnings of the pydarknet logger (printed as 'pydarknet: warning: ...' when nothing else handles it)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"train_00003.txt:{n_lines - 1}: expected 'class x y w h'" in w for w in warned), warned
    assert any(f"train_00003.txt:{n_lines}: class id 7 is outside 0..2" in w for w in warned), warned
    assert any("train.txt:13: image images/train/gone.jpg not found" in w for w in warned), warned
    assert f" loaded \t image: 12 \t box: {_good_boxes(shapes)}" in out   # the rest is read


def _good_boxes(root):
    """Label lines of five numbers with a class id below 3."""
    total = 0
    for path in glob.glob(str(root / "images" / "train" / "*.txt")):
        for line in open(path):
            parts = line.split()
            try:
                total += len(parts) == 5 and all(float(v) >= 0 for v in parts) and int(parts[0]) < 3
            except ValueError:
                pass
    return total
