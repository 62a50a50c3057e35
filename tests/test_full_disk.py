"""Writes that fail part-way (a full file system, here a file-size limit:
RLIMIT_FSIZE, under which a write past the limit stores what fits and then
fails with EFBIG, as ENOSPC does on a full disk): the file there before stays
as it was, the command gives one clear message, and training says whether it
goes on. Each case runs the real command line in a child process with the
limit set."""
import json
import os
import resource
import subprocess
import sys

import pytest

import pydarknet
from pydarknet.data.shapes import write_shapes_dataset
from helpers import child_env, conv, section, shapes_head

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no RLIMIT_FSIZE on this system")


def _cfg(iterations):
    return (section("net", width=32, height=32, channels=3, batch=4, subdivisions=2, learning_rate=0.001,
                    burn_in=2, momentum=0.9, decay=0.0005, max_batches=iterations, policy="steps", steps=12,
                    scales=".1")
            + conv(8, stride=2, bn=True) + conv(16, stride=2, bn=True) + shapes_head("6,6, 12,12, 24,24", random=0))


@pytest.fixture
def work(tmp_path):
    write_shapes_dataset(tmp_path, count=8, width=64, height=64)
    (tmp_path / "tiny.cfg").write_text(_cfg(60))
    return tmp_path


def _cli(folder, args, limit=None):
    """`python -m pydarknet ARGS` in `folder`, with files limited to `limit` bytes when given."""
    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = child_env(PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "pydarknet"] + args, cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limited if limit else None)


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def _hidden(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


def test_checkpoint_that_does_not_fit_stops_training_and_leaves_the_pair_in_place(work):
    r = _cli(work, ["detector", "train", "shapes.data", "tiny.cfg", "--backup", "bk", "-dont_show",
                    "--max-batches", "20"])   # a log of 20 lines, under the limit
    assert r.returncode == 0, r.stderr
    before = _snapshot(work / "bk")
    weights, state = before["tiny_last.weights"], before["tiny_last.state"]
    assert len(weights) < 9000 < len(state)   # the limit below lets the weights through, not the state

    r = _cli(work, ["detector", "train", "shapes.data", "tiny.cfg", "--backup", "bk", "-dont_show",
                    "--max-batches", "24", "bk/tiny_last.weights"], limit=9000)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert errors == ["pydarknet: error: bk/tiny_last.state: cannot write the checkpoint: File too large; training "
                      "stopped at iteration 24 (files written before are intact)"], r.stderr
    after = _snapshot(work / "bk")
    assert after["tiny_last.weights"] == weights and after["tiny_last.state"] == state
    assert "tiny_last.prev.state" not in after and not _hidden(work / "bk")
    assert after["tiny_final.weights"] != before["tiny_final.weights"]   # it fitted: iteration 24's
    assert pydarknet.load(str(work / "tiny.cfg"), str(work / "bk" / "tiny_last.weights")).iteration == 20


def test_log_and_chart_that_stop_fitting_are_left_whole_and_training_goes_on(work):
    limit = 12000   # above the weights and the state, below the chart and the log of 60 iterations
    r = _cli(work, ["detector", "train", "shapes.data", "tiny.cfg", "--backup", "bk", "-dont_show"], limit=limit)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln or "error" in ln]
    log_warnings = [ln for ln in warnings if "cannot append to the training log: File too large" in ln]
    chart_warnings = [ln for ln in warnings if "cannot draw the training chart" in ln]
    assert len(log_warnings) == 1 and "training goes on without it" in log_warnings[0], r.stderr
    assert len(chart_warnings) == 1 and "training goes on without it" in chart_warnings[0], r.stderr
    assert len(warnings) == 2, r.stderr
    assert "Training finished at iteration 60" in r.stdout + r.stderr
    raw = (work / "bk" / "tiny_train.jsonl").read_bytes()
    assert len(raw) <= limit and raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.splitlines()]   # whole lines only: every one parses
    kept = [rec["iteration"] for rec in records]
    assert kept == list(range(1, len(kept) + 1)) and 30 < len(kept) < 60
    assert f"it keeps iterations up to {len(kept)}," in log_warnings[0]
    assert pydarknet.load(str(work / "tiny.cfg"), str(work / "bk" / "tiny_final.weights")).iteration == 60
    assert "chart_tiny.png" not in os.listdir(work / "bk") and not _hidden(work / "bk")


def test_detection_results_that_do_not_fit_leave_the_old_file(work):
    r = _cli(work, ["detector", "train", "shapes.data", "tiny.cfg", "--backup", "bk", "-dont_show",
                    "--max-batches", "2"])
    assert r.returncode == 0, r.stderr
    (work / "result.json").write_text("[]\n")
    r = _cli(work, ["detector", "test", "shapes.data", "tiny.cfg", "bk/tiny_final.weights", "-dont_show",
                    "-thresh", "0", "-out", "result.json", "-ext_output", "train.txt"], limit=4096)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert errors == ["pydarknet: error: result.json: cannot write: File too large"], r.stderr
    assert (work / "result.json").read_text() == "[]\n" and not _hidden(work)
