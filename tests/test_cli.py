"""The pydarknet command line: darknet's output lines, both argument orders,
stdin lists, the detect shortcut, and one-line errors for bad input."""
import builtins
import errno
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet import cli
from pydarknet.cli import main

PREDICTED = re.compile(r"^(?P<path>.+): Predicted in \d+\.\d{6} milli-seconds\.$")
RESULT = re.compile(r"^(?P<name>[^:\t]+): (?P<pct>\d+)%"
                    r"(\t\(left_x: +(?P<l>-?\d+)   top_y: +-?\d+   width: +-?\d+   height: +-?\d+\))?$")

CFG = """[net]
width=64
height=64
channels=3

[convolutional]
filters=21
size=1
stride={stride}
activation=linear

[yolo]
mask=0,1,2
anchors={anchors}
classes=2
num=3
"""


def logit(p):
    return math.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def make_model(folder, stride, anchors, head_biases, name="net"):
    """cfg, weights, names and data files for a 1x1 conv (weights 0, so its
    output is its biases) under a 2-class [yolo] head. head_biases: per
    anchor {channel: logit} (channels 0-3 x, y, w, h; 4 objectness; 5, 6
    classes); unset channels are 0 for the box and -8 for scores."""
    folder = Path(folder)
    cfg = folder / f"{name}.cfg"
    cfg.write_text(CFG.format(stride=stride, anchors=anchors))
    net = pydarknet.load(cfg)
    params = net.layers[0].params
    params["weights"][:] = 0
    biases = np.zeros(21, np.float32)
    for a, values in enumerate(head_biases):
        biases[a * 7 + 4: a * 7 + 7] = -8
        for channel, value in values.items():
            biases[a * 7 + channel] = value
    params["biases"][:] = biases
    weights = folder / f"{name}.weights"
    net.save_weights(weights)
    names = folder / f"{name}.names"
    names.write_text("cat\ndog\n")
    data = folder / f"{name}.data"
    data.write_text(f"classes = 2\ntrain = train.txt\nnames = {names.name}\nbackup = backup/\n")
    return {"cfg": str(cfg), "weights": str(weights), "names": str(names), "data": str(data)}


def write_image(path, h, w, seed=0):
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return str(path)


# A 1x1 grid (stride 64) whose three anchors give known boxes on a 200x100 image:
#   anchor 0 (64x64, the whole image): cat 99%
#   anchor 1 (10x10 at the centre):    dog 91%, and cat at 24.7% (shown at -thresh .24 only)
#   anchor 2 (30x30 at the centre):    dog 98% and cat 87%, one box, best class first
EXACT_ANCHORS = "64,64, 10,10, 30,30"
EXACT_HEAD = [
    {4: 5.0, 5: 5.0, 6: -5.0},
    {4: 3.0, 5: logit(0.247 / sigmoid(3.0)), 6: 3.0},
    {4: 5.0, 5: 2.0, 6: 4.0},
]
EXACT_LINES = [
    "cat: 99%\t(left_x:    0   top_y:    0   width:  200   height:  100)",
    "dog: 98%\t(left_x:   53   top_y:   27   width:   94   height:   47)",
    "cat: 87%\t(left_x:   53   top_y:   27   width:   94   height:   47)",
    "dog: 91%\t(left_x:   84   top_y:   42   width:   31   height:   16)",
]
LOW_CAT = "cat: 25%\t(left_x:   84   top_y:   42   width:   31   height:   16)"


@pytest.fixture
def exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    files = make_model(tmp_path, 64, EXACT_ANCHORS, EXACT_HEAD)
    files["image"] = write_image(tmp_path / "img.png", 100, 200)
    return files


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """A 4x4 grid of overlapping 48x48 cat boxes (NMS removes some) and small dog boxes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    head = [{4: 5.0, 5: 5.0}, {4: 2.0, 6: 1.0, 0: -1.0, 2: 0.3}, {4: -5.0}]
    files = make_model(tmp_path, 16, "48,48, 10,10, 30,30", head, name="grid")
    files["image"] = write_image(tmp_path / "photo.jpg", 120, 160, seed=1)
    return files


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def results(lines):
    return [l for l in lines if not PREDICTED.match(l)]


# ----------------------------------------------------------------------------- happy paths

def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out[0].startswith(f"pydarknet {pydarknet.__version__} ")
    text = " ".join(out)  # argparse folds long lines
    assert f"CPU kernel {pydarknet.cpu_kernel()}, measured choices off)" in text  # the tests turn tuning off


def test_help_lists_darknet_flags(capsys):
    code, out, _ = run(capsys, "detector", "test", "-h")
    text = "\n".join(out)
    assert code == 0
    for flag in ("-thresh", "-ext_output", "-dont_show", "-letter_box"):
        assert flag in text


def test_detector_test_prints_darknet_lines_and_writes_predictions(exact, capsys):
    f = exact
    # flags between the weights and the image, as darknet's own README writes them
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], "-ext_output",
                         "-dont_show", f["image"])
    assert code == 0, err
    m = PREDICTED.match(out[0])
    assert m and m.group("path") == f["image"]
    assert out[1:] == EXACT_LINES
    assert all(RESULT.match(l) for l in out[1:])
    img = cv2.imread("predictions.jpg")
    assert img is not None and img.shape == (100, 200, 3)
    assert "predictions.jpg" in err and "error" not in err


@pytest.mark.parametrize("order", ["data-cfg", "cfg-data"])
def test_both_argument_orders(exact, capsys, order):
    f = exact
    pair = [f["data"], f["cfg"]] if order == "data-cfg" else [f["cfg"], f["data"]]
    code, out, err = run(capsys, "detector", "test", *pair, f["weights"], f["image"], "-ext_output", "-dont_show")
    assert code == 0, err
    assert out[1:] == EXACT_LINES


@pytest.mark.parametrize("swap", [False, True])
def test_data_and_cfg_told_apart_by_content_not_extension(exact, tmp_path, capsys, swap):
    f = exact
    misnamed_data, misnamed_cfg = tmp_path / "set.cfg", tmp_path / "model.data"
    misnamed_data.write_text(Path(f["data"]).read_text())
    misnamed_cfg.write_text(Path(f["cfg"]).read_text())
    pair = [misnamed_cfg, misnamed_data] if swap else [misnamed_data, misnamed_cfg]
    code, out, err = run(capsys, "detector", "test", *pair, f["weights"], f["image"], "-ext_output", "-dont_show")
    assert code == 0, err
    assert out[1:] == EXACT_LINES


def test_thresh_and_double_dash_spelling(exact, capsys):
    f = exact
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], f["image"],
                         "--thresh", "0.95", "--dont_show")
    assert code == 0, err
    assert out[1:] == ["cat: 99%", "dog: 98%"]


@pytest.mark.parametrize("thresh,letterbox", [(0.25, False), (0.5, False), (0.1, True)])
def test_detection_count_matches_network_detect(grid, capsys, thresh, letterbox):
    f = grid
    net = pydarknet.load(f["cfg"], f["weights"], names=f["names"])
    expected = net.detect(cv2.imread(f["image"]), thresh=thresh, nms=0.45, letterbox=letterbox or None)
    assert len(expected) > 5
    argv = ["detector", "test", f["data"], f["cfg"], f["weights"], f["image"], "-thresh", thresh, "-ext_output",
            "-dont_show"] + (["-letter_box"] if letterbox else [])
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    found = [RESULT.match(l) for l in results(out)]
    assert all(found) and len(found) == len(expected)
    assert sorted(m.group("name") for m in found) == sorted(d.name for d in expected)
    lefts = [int(m.group("l")) for m in found]
    assert lefts == sorted(lefts)  # darknet prints boxes from the left edge rightwards
    assert cv2.imread("predictions.jpg") is not None


def test_stdin_list_reports_missing_image_and_goes_on(exact, tmp_path, capsys, monkeypatch):
    f = exact
    second = write_image(tmp_path / "second.jpg", 100, 200, seed=3)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{f['image']}\n\n{tmp_path / 'gone.jpg'}\n{second}\r\n"))
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], "-dont_show", "-ext_output")
    assert code == 1  # one image failed
    assert [PREDICTED.match(l).group("path") for l in out if PREDICTED.match(l)] == [f["image"], second]
    assert results(out) == EXACT_LINES * 2
    errors = [l for l in err.splitlines() if "error" in l]
    assert errors == [f"pydarknet: error: {tmp_path / 'gone.jpg'}: cannot open image file: No such file or directory"]


def test_stdin_empty_just_ends(exact, capsys, monkeypatch):
    f = exact
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], "-dont_show")
    assert (code, out) == (0, [])
    assert "error" not in err


def test_detect_shortcut_uses_lower_default_thresh_and_names(exact, capsys):
    f = exact
    code, out, err = run(capsys, "detect", f["cfg"], f["weights"], f["image"], "-names", f["names"], "-ext_output",
                         "-dont_show")
    assert code == 0, err
    assert out[1:] == EXACT_LINES + [LOW_CAT]  # 24.7% passes detect's .24, not detector test's .25


def test_detect_shortcut_names_fallbacks(exact, tmp_path, capsys):
    f = exact
    code, out, err = run(capsys, "detect", f["cfg"], f["weights"], f["image"], "-dont_show")
    assert code == 0, err
    assert out[1:] == ["0: 99%", "1: 98%", "0: 87%", "1: 91%", "0: 25%"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coco.names").write_text("kitten\npuppy\n")
    code, out, err = run(capsys, "detect", f["cfg"], f["weights"], f["image"], "-dont_show")
    assert code == 0, err
    assert out[1:3] == ["kitten: 99%", "puppy: 98%"]


# ----------------------------------------------------------------------------- windows

def _fake_window(monkeypatch, fail=False):
    shown = []

    def imshow(title, image):
        if fail:
            raise cv2.error("The function is not implemented (no GUI backend)")
        shown.append(image.shape)

    monkeypatch.setattr(cv2, "imshow", imshow)
    monkeypatch.setattr(cv2, "waitKey", lambda delay=0: -1)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    return shown


@pytest.mark.parametrize("display,dont_show,windows", [(None, False, 0), (":0", True, 0), (":0", False, 1)])
def test_window_only_with_display_and_without_dont_show(exact, capsys, monkeypatch, display, dont_show, windows):
    f = exact
    monkeypatch.setattr(cli.sys, "platform", "linux")
    if display:
        monkeypatch.setenv("DISPLAY", display)
    shown = _fake_window(monkeypatch)
    argv = ["detector", "test", f["data"], f["cfg"], f["weights"], f["image"]] + (["-dont_show"] if dont_show else [])
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert len(shown) == windows


def test_window_failure_is_a_warning(exact, capsys, monkeypatch):
    f = exact
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    _fake_window(monkeypatch, fail=True)
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], f["image"])
    assert code == 0
    assert out[1:] == ["cat: 99%", "dog: 98%", "cat: 87%", "dog: 91%"]
    assert "pydarknet: warning: cannot show the result in a window" in err and "-dont_show" in err
    assert cv2.imread("predictions.jpg") is not None


# ----------------------------------------------------------------------------- bad input

def _bad_cfg(tmp_path, f):
    p = tmp_path / "bad.cfg"
    p.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n\n[bogus]\nsize=1\n")
    return [f["data"], p, f["weights"], f["image"]]


def _wrong_filters(tmp_path, f):
    p = tmp_path / "filters.cfg"
    p.write_text(Path(f["cfg"]).read_text().replace("filters=21", "filters=20"))
    return [f["data"], p, f["weights"], f["image"]]


def _short_weights(tmp_path, f):
    p = tmp_path / "short.weights"
    p.write_bytes(Path(f["weights"]).read_bytes()[:60])
    return [f["data"], f["cfg"], p, f["image"]]


def _long_weights(tmp_path, f):
    p = tmp_path / "long.weights"
    p.write_bytes(Path(f["weights"]).read_bytes() + b"\0" * 8)
    return [f["data"], f["cfg"], p, f["image"]]


def _garbage_image(tmp_path, f):
    p = tmp_path / "garbage.jpg"
    p.write_bytes(b"this is not a jpeg\n" * 10)
    return [f["data"], f["cfg"], f["weights"], p]


def _empty_folder(tmp_path, f):
    (tmp_path / "empty").mkdir()
    return [f["data"], f["cfg"], f["weights"], tmp_path / "empty"]


def _data_with(text):
    def make(tmp_path, f):
        p = tmp_path / "other.data"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [p, f["cfg"], f["weights"], f["image"]]
    return make


def _names_with(data):
    def make(tmp_path, f):
        (tmp_path / "bin.names").write_bytes(data)
        return _data_with("classes = 2\nnames = bin.names\n")(tmp_path, f)
    return make


def _replace(key, value):
    def make(tmp_path, f):
        g = dict(f, **{key: tmp_path / value})
        return [g["data"], g["cfg"], g["weights"], g["image"]]
    return make


FAILURES = {  # name: (argv maker, words the one error line must hold)
    "missing cfg": (_replace("cfg", "nope.cfg"), ["nope.cfg", "cannot open cfg file", "No such file"]),
    "missing data": (_replace("data", "nope.data"), ["nope.data", "cannot open data file"]),
    "missing weights": (_replace("weights", "nope.weights"), ["nope.weights", "cannot open weights file"]),
    "missing image": (_replace("image", "nope.jpg"), ["nope.jpg", "cannot open image file"]),
    "folder without images": (_empty_folder, ["empty", "no image files"]),
    "malformed cfg": (_bad_cfg, ["bad.cfg:6:", "bogus"]),
    "cfg that cannot be built": (_wrong_filters, ["filters.cfg:", "yolo", "channels"]),
    "weights too short": (_short_weights, ["short.weights", "byte offset", "does not match"]),
    "weights too long": (_long_weights, ["long.weights", "byte offset", "does not match"]),
    "undecodable image": (_garbage_image, ["garbage.jpg", "cannot decode image"]),
    "names file missing": (_data_with("classes = 2\nnames = absent.names\n"), ["absent.names", "other.data"]),
    "no names key": (_data_with("classes = 2\ntrain = t.txt\n"), ["other.data", "names"]),
    "malformed data": (_data_with("classes = 2\nnames = net.names\nnot a key value line\n"), ["other.data:3:"]),
    "UTF-16 data": (_data_with("classes = 2\nnames = net.names\n".encode("utf-16")),
                    ["other.data: data file: the file is UTF-16 encoded"]),
    "binary names": (_names_with(b"cat\ndog\n\0\x01\x02"), ["bin.names: names file: not a text file", "offset 8"]),
}


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pydarknet: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_bad_files_give_one_line_and_status_1(exact, tmp_path, capsys, case):
    make, words = FAILURES[case]
    code, out, err = run(capsys, "detector", "test", *make(tmp_path, exact), "-dont_show")
    line = _one_error_line(err)
    assert code == 1
    assert out == []
    for w in words:
        assert w in line, line
    assert not os.path.exists("predictions.jpg")


def test_weights_given_an_image_gets_a_hint(exact, capsys):
    f = exact
    Path("dog.jpg").write_bytes(Path(f["image"]).read_bytes())
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], "dog.jpg", "-dont_show")
    assert code == 1
    assert "dog.jpg" in _one_error_line(err) and "weights file comes before the image" in err


@pytest.mark.parametrize("command", ["detector test", "detect"])
def test_image_and_weights_swapped_gets_a_hint(exact, capsys, command):
    f = exact
    Path("dog.jpg").write_bytes(Path(f["image"]).read_bytes())
    files = [f["data"], f["cfg"]] if command == "detector test" else [f["cfg"]]
    code, out, err = run(capsys, *command.split(), *files, "dog.jpg", f["weights"], "-dont_show")
    assert code == 1 and out == []
    line = _one_error_line(err)
    assert line.startswith(f"pydarknet: error: {f['weights']}: cannot decode image"), line
    assert line.endswith(f"(the weights file comes before the image: ... {f['weights']} dog.jpg)"), line


def test_missing_names_file_for_detect(exact, capsys):
    f = exact
    code, out, err = run(capsys, "detect", f["cfg"], f["weights"], f["image"], "-names", "nope.names")
    assert code == 1 and "nope.names" in _one_error_line(err)


def test_unreadable_weights(exact, capsys, monkeypatch):
    f = exact
    os.chmod(f["weights"], 0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root reads a file whatever its mode: opening this one fails here as it does for anyone else
        weights, real_open = os.path.abspath(f["weights"]), builtins.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == weights:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], f["image"], "-dont_show")
    assert code == 1 and "Permission denied" in _one_error_line(err)


USAGE = {  # name: (argv after "detector test <data> <cfg>" or a whole argv, words)
    "no command": ([], ["required", "<command>"]),
    "unknown command": (["frobnicate"], ["frobnicate"]),
    "unknown detector subcommand": (["detector", "dance"], ["dance", "test"]),
    "weights missing": (["detector", "test", "{data}", "{cfg}"], ["detector test", "weights"]),
    "unknown flag": (["detector", "test", "{data}", "{cfg}", "{weights}", "-bogus"], ["detector test", "-bogus"]),
    "extra argument": (["detector", "test", "{data}", "{cfg}", "{weights}", "{image}", "x"], ["unrecognized", "x"]),
    "thresh not a number": (["detector", "test", "{data}", "{cfg}", "{weights}", "-thresh", "high"],
                            ["-thresh", "high"]),
    "thresh out of range": (["detect", "{cfg}", "{weights}", "-thresh", "1.5"], ["detect", "-thresh", "1.5"]),
    "two cfgs": (["detector", "test", "{cfg}", "{cfg}", "{weights}", "{image}"], ["net.cfg", "both look like cfg"]),
    # numbers past a C int are refused by the parser, not met as an OverflowError in the core
    "device index past a C int": (["detector", "test", "{data}", "{cfg}", "{weights}", "{image}", "-i",
                                   "99999999999999999999"], ["-i", "at most 2147483647"]),
    "max batches past a C int": (["detector", "train", "{data}", "{cfg}", "--max-batches", "2147483648"],
                                 ["--max-batches", "at most 2147483647"]),
    "negative seed": (["detector", "train", "{data}", "{cfg}", "-seed", "-5"], ["-seed", "at least 0", "'-5'"]),
    "seed past 32 bits": (["classifier", "train", "{data}", "{cfg}", "-seed", "4294967296"],
                          ["-seed", "at most 4294967295"]),
    "anchors seed negative": (["detector", "calc_anchors", "{data}", "-seed", "-1"], ["-seed", "at least 0"]),
}


@pytest.mark.parametrize("case", USAGE, ids=list(USAGE))
def test_usage_errors_give_one_line_and_status_2(exact, capsys, case):
    argv, words = USAGE[case]
    code, out, err = run(capsys, *(a.format(**exact) for a in argv))
    line = _one_error_line(err)
    assert code == 2 and out == []
    for w in words:
        assert w in line, line


def test_unwritable_predictions_stops_the_run(exact, capsys, monkeypatch):
    f = exact
    os.mkdir("predictions.jpg")  # in the way of the annotated image
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{f['image']}\n{f['image']}\n"))
    code, out, err = run(capsys, "detector", "test", f["data"], f["cfg"], f["weights"], "-dont_show")
    assert code == 1
    assert len([l for l in out if PREDICTED.match(l)]) == 1
    assert "predictions.jpg: cannot write the annotated image" in _one_error_line(err)


# ----------------------------------------------------------------------------- python -m pydarknet

def _module(args, cwd, stdin=""):
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-m", "pydarknet", *map(str, args)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_module_entry_point(exact, tmp_path):
    f = exact
    p = _module(["detector", "test", f["cfg"], f["data"], f["weights"], "-ext_output"], tmp_path,
                stdin=f"{f['image']}\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert PREDICTED.match(lines[0]) and lines[1:] == EXACT_LINES
    assert cv2.imread(str(tmp_path / "predictions.jpg")) is not None

    p = _module(["detector", "test", f["data"], f["cfg"], tmp_path / "nope.weights", f["image"]], tmp_path)
    assert p.returncode == 1 and p.stdout == ""
    assert "nope.weights" in _one_error_line(p.stderr)

