"""`pydarknet detector train` and `detector map`: checkpoints and their names,
the JSON-lines log, the chart, both argument orders, errors before training,
Ctrl-C, and a killed-and-resumed run ending with the very weights of a run
that was never stopped."""
import json
import os
import re

import pytest

import pydarknet
from pydarknet.cli import main
from pydarknet.data import MultiScale
from pydarknet.data.lists import DetectionDataset
from pydarknet.data.shapes import write_shapes_dataset
from pydarknet.evaluate import detect_dataset, evaluate
from pydarknet.train import (TrainError, cfg_base, checkpoint_path, compute_map, state_path,
                             train_detector)
from helpers import conv, section, shapes_head

# a small yolo network at 32x32, 6 iterations of batch 4 in 2 mini-batches
CFG = (section("net", width=32, height=32, channels=3, batch=4, subdivisions=2, learning_rate=0.001, burn_in=2,
               momentum=0.9, decay=0.0005, max_batches=6, policy="steps", steps=5, scales=".1")
       + conv(8, stride=2, bn=True) + conv(16, stride=2, bn=True) + shapes_head("6,6, 12,12, 24,24", random=0))

LOG_LINE = re.compile(r"^ (\d+): (-?\d+\.\d{6}), (-?\d+\.\d{6}) avg loss, (\d+\.\d{6}) rate, "
                      r"\d+\.\d{6} seconds, (\d+) images, \d+\.\d{6} hours left$")
MAP_LINE = re.compile(r"^ mean average precision \(mAP@(\d\.\d\d)\) = (\d\.\d{6}), or (\d+\.\d\d) %$")
MAP_RANGE_LINE = re.compile(r"^ mean average precision \(mAP@0\.50:0\.95\) = (\d\.\d{6}), or \d+\.\d\d %   "
                            r"\(mean over IoU thresholds 0\.50, 0\.55, \.\.\., 0\.95; (.*)\)$")
CLASS_LINE = re.compile(r"^class_id = (\d+), name = (\w+), ap = (\d+\.\d\d)%   \t \(TP = (\d+), FP = (\d+)\)$")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A shapes dataset (8 images of 64x64) and a small yolo cfg at 32x32, in
    a working folder of their own."""
    monkeypatch.chdir(tmp_path)
    data = write_shapes_dataset(tmp_path, count=8, width=64, height=64)
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(CFG)
    return {"data": os.path.relpath(data, tmp_path), "cfg": "tiny.cfg", "root": tmp_path}


def train(work, backup="bk", **kw):
    kw.setdefault("log", lambda line: None)
    kw.setdefault("workers", 1)
    return train_detector(work["cfg"], work["data"], backup=backup, **kw)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _final_bytes(backup):
    with open(os.path.join(backup, "tiny_final.weights"), "rb") as f:
        return f.read()


def _random_weights(work, path="random.weights", seed=3, max_layers=None):
    """Weights of the work cfg, random from `seed` (the first `max_layers` layers' alone when given)."""
    from pydarknet.weights import save_weights

    save_weights(pydarknet.load(work["cfg"], seed=seed), path, max_layers=max_layers)
    return path


# ----------------------------------------------------------------------------- checkpoints, log, chart

def test_checkpoints_log_and_chart(work):
    lines = []
    s = train(work, save_every=4, last_every=2, map_every=3, log=lines.append)
    bk = work["root"] / "bk"
    names = sorted(os.listdir(bk))
    assert names == sorted(["tiny_4.weights", "tiny_5.weights", "tiny_best.weights", "tiny_final.weights",
                            "tiny_last.weights", "tiny_last.state", "tiny_train.jsonl", "chart_tiny.png"])
    assert s.iteration == 6 and s.start_iteration == 0 and not s.interrupted
    assert s.saved["final"] == checkpoint_path("bk", "tiny", "final")
    # the images seen are in each checkpoint's header
    assert pydarknet.load(work["cfg"], bk / "tiny_4.weights").seen == 16
    assert pydarknet.load(work["cfg"], bk / "tiny_final.weights").iteration == 6

    records = read_log(bk / "tiny_train.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert {"loss", "avg_loss", "learning_rate", "images", "seconds", "images_per_s"} <= set(r)
        assert r["images"] == 4 * r["iteration"]
    assert [r["iteration"] for r in records if "mAP" in r] == [3, 6]
    assert [it for it, _ in s.maps] == [3, 6] and s.best_map == max(m for _, m in s.maps)
    # darknet's average: starts at the first loss, then avg * .9 + loss * .1
    avg = records[0]["loss"]
    for r in records:
        avg = avg * 0.9 + r["loss"] * 0.1
        assert r["avg_loss"] == pytest.approx(avg, rel=1e-9)
    assert records[1]["learning_rate"] == pytest.approx(0.001)          # after burn_in=2
    assert records[5]["learning_rate"] == pytest.approx(0.0001)         # after steps=5

    log_lines = [m for m in map(LOG_LINE.match, lines) if m]
    assert [int(m.group(1)) for m in log_lines] == [1, 2, 3, 4, 5, 6]
    assert [int(m.group(5)) for m in log_lines] == [4, 8, 12, 16, 20, 24]
    assert any(MAP_LINE.match(line) for line in lines)
    assert "Saving weights to " + os.path.join("bk", "tiny_4.weights") in lines
    # training's -map and `detector map` are one computation: the final weights give the last mAPs again
    final = compute_map(pydarknet.load(work["cfg"], bk / "tiny_final.weights"), "train.txt", 3)
    assert records[-1]["mAP"] == pytest.approx(final.map, abs=1e-12)
    assert records[-1]["mAP@0.5:0.95"] == pytest.approx(final.result.map_50_95, abs=1e-12)
    assert sum(bool(MAP_RANGE_LINE.match(line)) for line in lines) == 2

    with open(bk / "chart_tiny.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import cv2

    chart = cv2.imread(str(bk / "chart_tiny.png"))
    assert chart is not None and chart.shape[0] > 100 and chart.shape[1] > 100
    assert not [n for n in os.listdir(bk) if ".tmp" in n]


def test_darknet_checkpoint_defaults_and_names(work):
    (work["root"] / "shapes.data").write_text(
        "classes = 3\ntrain = train.txt\nnames = shapes.names\nbackup = out/\nsavelast = 3\nsaveweights = 100\n")
    lines = []
    s = train(work, backup=None, max_batches=4, log=lines.append)
    assert s.backup == "out/" and os.path.isdir(work["root"] / "out")
    assert "Weights are saved after: 100 iterations. Last weights (*_last.weights) are stored every 3 " \
           "iterations." in lines
    assert set(s.saved) == {"last", "final"}   # neither the step (5) nor 100 reached
    assert [line for line in lines if line.startswith("Saving")] == [
        "Saving weights to " + os.path.join("out/", name) for name in
        ("tiny_last.weights", "tiny_final.weights", "tiny_last.weights")]
    records = read_log(work["root"] / "out" / "tiny_train.jsonl")
    assert len(records) == 4
    assert cfg_base("cfg/yolo-obj.cfg") == "yolo-obj" and state_path("a/x_last.weights") == "a/x_last.state"


def test_progress_bar_replaces_the_log_lines(work, capsys):
    pytest.importorskip("tqdm")
    lines = []
    s = train(work, max_batches=3, progress=True, log=lines.append, chart=False)
    err = capsys.readouterr().err
    assert s.iteration == 3 and not any(LOG_LINE.match(line) for line in lines)
    assert "3/3" in err and "avg=" in err
    assert len(read_log("bk/tiny_train.jsonl")) == 3 and not os.path.exists("bk/chart_tiny.png")


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("order", ["data-cfg", "cfg-data"])
def test_cli_train_both_orders(work, capsys, order):
    files = [work["data"], work["cfg"]] if order == "data-cfg" else [work["cfg"], work["data"]]
    rc = main(["detector", "train", *files, "--max-batches", "3", "--backup", "b", "-dont_show", "-seed", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert [int(m.group(1)) for m in map(LOG_LINE.match, out.splitlines()) if m] == [1, 2, 3]
    assert "on the CPU with" in err
    assert os.path.exists(os.path.join("b", "tiny_final.weights"))
    assert "Traceback" not in err


def test_cli_same_seed_same_weights_different_seed_not(work, capsys):
    for seed, backup in ((3, "s1"), (3, "s2"), (4, "s3")):
        assert main(["detector", "train", work["data"], work["cfg"], "--max-batches", "2", "--backup", backup,
                     "-seed", str(seed)]) == 0
    capsys.readouterr()
    assert _final_bytes("s1") == _final_bytes("s2") != _final_bytes("s3")


def test_process_workers_train_the_same_weights_as_threads(work, capsys):
    """--workers 3 makes the batches in processes (shared-memory slots): the
    very batches, so the very weights, of the threads (--workers 1)."""
    for workers, backup in (("1", "threads"), ("3", "processes")):
        assert main(["detector", "train", work["data"], work["cfg"], "--max-batches", "2", "--backup", backup,
                     "-seed", "3", "--workers", workers]) == 0
    capsys.readouterr()
    assert _final_bytes("threads") == _final_bytes("processes")


def _one_error_line(capsys, rc, *expected):
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("pydarknet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_error_missing_train_entry(work, capsys):
    (work["root"] / "bad.data").write_text("classes = 3\nnames = shapes.names\n")
    rc = main(["detector", "train", "bad.data", work["cfg"], "--backup", "bk"])
    _one_error_line(capsys, rc, "bad.data", "train")
    assert not os.path.exists("bk/tiny_train.jsonl")


def test_error_unreadable_train_list(work, capsys):
    (work["root"] / "bad.data").write_text("classes = 3\ntrain = nowhere.txt\n")
    rc = main(["detector", "train", work["cfg"], "bad.data"])
    _one_error_line(capsys, rc, "nowhere.txt", "bad.data")


def test_error_unwritable_backup_folder(work, capsys):
    (work["root"] / "afile").write_text("not a folder")
    rc = main(["detector", "train", work["data"], work["cfg"], "--backup", "afile/sub"])
    _one_error_line(capsys, rc, "afile/sub", "backup folder")


def test_error_missing_weights(work, capsys):
    rc = main(["detector", "train", work["data"], work["cfg"], "missing.weights", "--backup", "bk"])
    _one_error_line(capsys, rc, "missing.weights")
    assert not os.path.exists("bk/tiny_last.weights")


def test_error_map_without_names_or_valid_list(work, capsys):
    (work["root"] / "nonames.data").write_text("classes = 3\ntrain = train.txt\n")
    rc = main(["detector", "train", "nonames.data", work["cfg"], "-map"])
    _one_error_line(capsys, rc, "nonames.data", "names")
    (work["root"] / "novalid.data").write_text("classes = 3\ntrain = train.txt\nvalid = gone.txt\n"
                                               "names = shapes.names\n")
    rc = main(["detector", "train", "novalid.data", work["cfg"], "-map"])
    _one_error_line(capsys, rc, "gone.txt", "novalid.data")


def test_error_bad_flag_values(work, capsys):
    assert main(["detector", "train", work["data"], work["cfg"], "--map-every", "0"]) == 2
    assert main(["detector", "map", work["data"], work["cfg"], "x.weights", "-points", "7"]) == 2
    capsys.readouterr()


def test_ctrl_c_saves_last_and_exits_130(work, capsys, monkeypatch):
    calls = []
    real = pydarknet.Network.train_batch

    def interrupted(self, x, t):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt   # arrives during the third batch: two updates done
        return real(self, x, t)

    monkeypatch.setattr(pydarknet.Network, "train_batch", interrupted)
    rc = main(["detector", "train", work["data"], work["cfg"], "--backup", "bk"])
    out, err = capsys.readouterr()
    assert rc == 130
    last = os.path.join("bk", "tiny_last.weights")
    assert "interrupted at iteration 2" in err and last in err and "Traceback" not in err
    assert pydarknet.load(work["cfg"], last).iteration == 2
    assert os.path.exists(os.path.join("bk", "tiny_last.state"))
    assert not os.path.exists(os.path.join("bk", "tiny_final.weights"))


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("multiscale", [False, True])
def test_killed_and_resumed_run_ends_with_the_same_weights(work, multiscale):
    """8 iterations straight, against 3 + (Ctrl-C) + 5 resumed from _last;
    with multi-scale sizes changing every 2 iterations when asked."""
    sizes = (lambda: MultiScale(32, 32, random=1, seed=5, every=2)) if multiscale else (lambda: False)
    kw = dict(max_batches=8, seed=7, save_every=4, last_every=2, map_every=4)
    whole = train(work, backup="whole", multiscale=sizes(), **kw)
    assert whole.iteration == 8
    if multiscale:
        assert len({(r["width"], r["height"]) for r in read_log("whole/tiny_train.jsonl")}) > 1

    with pytest.raises(KeyboardInterrupt):
        train(work, backup="cut", multiscale=sizes(), stop_after=3, **kw)   # _last was not due at 3
    first = pydarknet.load(work["cfg"], "cut/tiny_last.weights")
    assert first.iteration == 3 and os.path.exists("cut/tiny_last.state")

    resumed = train(work, backup="cut", weights="cut/tiny_last.weights", multiscale=sizes(), **kw)
    assert resumed.start_iteration == 3 and resumed.iteration == 8
    assert _final_bytes("cut") == _final_bytes("whole")

    a, b = read_log("whole/tiny_train.jsonl"), read_log("cut/tiny_train.jsonl")
    assert [r["iteration"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["avg_loss"] for r in a] == pytest.approx([r["avg_loss"] for r in b])


def test_resume_drops_log_lines_past_the_checkpoint_and_clear_restarts(work, capsys):
    train(work, backup="bk", max_batches=4, save_every=2, last_every=1)
    assert [r["iteration"] for r in read_log("bk/tiny_train.jsonl")] == [1, 2, 3, 4]
    # resuming from the checkpoint at 2 (no .state beside it) keeps lines 1..2 and adds 3..5
    s = train(work, backup="bk", weights="bk/tiny_2.weights", max_batches=5)
    assert s.start_iteration == 2 and s.iteration == 5
    assert [r["iteration"] for r in read_log("bk/tiny_train.jsonl")] == [1, 2, 3, 4, 5]
    assert "no training state beside it" in capsys.readouterr().err
    # -clear: the count starts at 0 from the given weights, the state beside them unused
    s = train(work, backup="bk", weights="bk/tiny_last.weights", max_batches=1, clear=True)
    assert s.start_iteration == 0 and s.iteration == 1
    assert [r["iteration"] for r in read_log("bk/tiny_train.jsonl")] == [1]


def test_resume_with_a_damaged_log_line_drops_it(work, capsys):
    train(work, backup="bk", max_batches=2, last_every=1)
    with open("bk/tiny_train.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00 half a line from a crash\n")      # not UTF-8, not JSON
    s = train(work, backup="bk", weights="bk/tiny_last.weights", max_batches=3)
    assert s.start_iteration == 2 and s.iteration == 3
    assert [r["iteration"] for r in read_log("bk/tiny_train.jsonl")] == [1, 2, 3]


def test_error_checkpoint_that_cannot_be_written(work, capsys):
    os.makedirs("bk/tiny_last.state")                  # a folder where the training state goes
    rc = main(["detector", "train", work["data"], work["cfg"], "--backup", "bk", "--max-batches", "1",
               "--workers", "0"])
    _one_error_line(capsys, rc, "bk/tiny_last.state: cannot write the checkpoint: Is a directory")


def test_state_from_another_iteration_is_not_used(work, capsys):
    train(work, backup="bk", max_batches=2, last_every=2, save_every=100)
    import shutil

    shutil.copy("bk/tiny_last.state", "bk/old.state")
    train(work, weights="bk/tiny_last.weights", max_batches=4)
    shutil.copy("bk/old.state", "bk/tiny_last.state")   # weights at 4, state at 2
    s = train(work, weights="bk/tiny_last.weights", max_batches=5)
    assert s.start_iteration == 4 and s.iteration == 5
    assert "saved at iteration 2" in capsys.readouterr().err


def test_partial_weights_start_the_rest_from_random(work, capsys):
    s = train(work, weights=_random_weights(work, "part.weights", seed=11, max_layers=2), max_batches=1)
    assert s.iteration == 1
    assert "holds the first 2 of 4 layers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- detector map

def test_detector_map_matches_evaluate(work, capsys):
    train(work, backup="bk", max_batches=3)
    weights = os.path.join("bk", "tiny_final.weights")
    for extra, iou, points in (([], 0.5, 0), (["-iou_thresh", ".3", "-points", "11", "-dont_show"], 0.3, 11)):
        rc = main(["detector", "map", work["cfg"], work["data"], weights, "-thresh", ".2", *extra])
        out, err = capsys.readouterr()
        assert rc == 0, err
        lines = out.splitlines()
        maps = [MAP_LINE.match(line) for line in lines if MAP_LINE.match(line)]
        assert len(maps) == 1 and float(maps[0].group(1)) == pytest.approx(iou)
        classes = [CLASS_LINE.match(line) for line in lines if CLASS_LINE.match(line)]
        assert [(int(m.group(1)), m.group(2)) for m in classes] == [(0, "square"), (1, "circle"), (2, "triangle")]

        net = pydarknet.load(work["cfg"], weights)
        ds = DetectionDataset.from_list("train.txt", 3)
        truths = [ds.labels(i)[0] for i in range(len(ds))]
        expected = evaluate(detect_dataset(net, ds.images, thresh=0.005, nms=0.45), truths, 3, iou_thresh=iou,
                            points=points, conf_thresh=0.2)
        assert float(maps[0].group(2)) == pytest.approx(expected.map, abs=5e-7)
        for m in classes:
            c = expected.classes[int(m.group(1))]
            assert float(m.group(3)) == pytest.approx(c.ap * 100, abs=0.005)
            assert (int(m.group(4)), int(m.group(5))) == (c.tp, c.fp)
        assert (f" for conf_thresh = 0.20, TP = {expected.tp}, FP = {expected.fp}, FN = {expected.fn}, "
                f"average IoU = {expected.avg_iou * 100:.2f} %") in lines
        assert (f" for conf_thresh = 0.20, precision = {expected.precision:.2f}, recall = {expected.recall:.2f}, "
                f"F1-score = {expected.f1:.2f}") in lines
        coco = [MAP_RANGE_LINE.match(line) for line in lines if MAP_RANGE_LINE.match(line)]
        assert len(coco) == 1 and float(coco[0].group(1)) == pytest.approx(expected.map_50_95, abs=5e-7)
        assert coco[0].group(2) == ("used 11 Recall-points" if points else "used Area-Under-Curve for each unique Recall")
        run = compute_map(net, "train.txt", 3, thresh=0.2, iou_thresh=iou, points=points)
        assert run.map == pytest.approx(expected.map, abs=1e-12)


def test_detector_map_errors(work, capsys):
    rc = main(["detector", "map", work["data"], work["cfg"], "missing.weights"])
    _one_error_line(capsys, rc, "missing.weights")
    (work["root"] / "nonames.data").write_text("classes = 3\nvalid = train.txt\nnames = nothere.names\n")
    train(work, backup="bk", max_batches=1)
    rc = main(["detector", "map", "nonames.data", work["cfg"], "bk/tiny_final.weights"])
    _one_error_line(capsys, rc, "nothere.names")


def test_detector_map_refuses_a_network_without_detection_head(work, capsys):
    (work["root"] / "classifier.cfg").write_text("[net]\nwidth=8\nheight=8\nchannels=3\n"
                                                 "[convolutional]\nfilters=3\nsize=1\nactivation=linear\n"
                                                 "[avgpool]\n[softmax]\n")
    rc = main(["detector", "map", work["data"], "classifier.cfg", "any.weights"])
    _one_error_line(capsys, rc, "classifier.cfg", "no [yolo] or [region] layer")


def test_detector_map_reports_and_skips_bad_images_and_label_lines(work, capsys, caplog):
    weights = _random_weights(work)
    images = [line for line in (work["root"] / "train.txt").read_text().splitlines() if line]
    (work["root"] / "obj" / "broken.jpg").write_bytes(b"not a jpeg")
    label = work["root"] / "obj" / "shape_0002.txt"
    label.write_text(label.read_text() + "2 0.5 0.5 0.1\n")
    bad_line = len(label.read_text().splitlines())
    (work["root"] / "valid.txt").write_text("\n".join(images[:3] + ["obj/gone.jpg", "obj/broken.jpg"] + images[3:]))
    (work["root"] / "v.data").write_text("classes = 3\ntrain = train.txt\nvalid = valid.txt\nnames = shapes.names\n")
    rc = main(["detector", "map", "v.data", work["cfg"], weights, "-points", "101"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("valid.txt:4: image obj/gone.jpg not found" in w for w in warned), warned
    assert any("broken.jpg: cannot decode image" in w for w in warned), warned
    assert any(f"shape_0002.txt:{bad_line}: expected 'class x y w h'" in w for w in warned), warned
    assert f"{len(images)} images of valid.txt" in err and "(1 unreadable images left out)" in err
    # the same numbers as the readable images alone
    net = pydarknet.load(work["cfg"], weights)
    ds = DetectionDataset.from_list("train.txt", 3)
    expected = evaluate(detect_dataset(net, ds.images, thresh=0.005, nms=0.45),
                        [ds.labels(i)[0] for i in range(len(ds))], 3, points=101)
    found = [MAP_LINE.match(line) for line in out.splitlines() if MAP_LINE.match(line)]
    assert float(found[0].group(2)) == pytest.approx(expected.map, abs=5e-7)
    truths = sum(len(ds.labels(i)[0]) for i in range(len(ds)))
    assert f"unique_truth_count = {truths}" in out


def test_library_errors_name_the_file(work):
    with pytest.raises(TrainError, match="max_batches"):
        train(work, max_batches=0)
    (work["root"] / "classifier.cfg").write_text("[net]\nwidth=8\nheight=8\nchannels=3\nbatch=2\nmax_batches=2\n"
                                                 "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
    with pytest.raises(TrainError, match="classifier.cfg: no \\[yolo\\]"):
        train_detector("classifier.cfg", work["data"], backup="bk", log=lambda line: None)
