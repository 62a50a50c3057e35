"""SIGKILL at random moments of a `pydarknet detector train` run, resumed each
time from <backup>/<cfg-name>_last.weights: the run ends with the very bytes
of the weights of a run that was never stopped, and every checkpoint a killed
run leaves behind loads.

The checkpoints are written every iteration (savelast=1 in the .data file),
so that kills often land while the weights and their training state are
being replaced: a pair of one iteration must survive that (the state in
place moves to <name>.prev.state before the new pair is written)."""
import os
import random
import signal
import subprocess
import sys
import time

import pydarknet
from pydarknet.data.shapes import write_shapes_dataset
from helpers import child_env, conv, section, shapes_head

ITERATIONS = 40
CFG = (section("net", width=32, height=32, channels=3, batch=4, subdivisions=2, learning_rate=0.001, burn_in=2,
               momentum=0.9, decay=0.0005, max_batches=ITERATIONS, policy="steps", steps=12, scales=".1")
       + conv(8, stride=2, bn=True) + conv(16, stride=2, bn=True) + shapes_head("6,6, 12,12, 24,24", random=0))


def _command(folder, backup, weights=None, workers=None):
    cmd = [sys.executable, "-m", "pydarknet", "detector", "train", "shapes.data", "tiny.cfg", "-seed", "7",
           "--backup", backup, "-dont_show"]
    return cmd + (["--workers", str(workers)] if workers is not None else []) + ([weights] if weights else [])


def _env():
    return child_env()


def _logged_iterations(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b'"iteration"')
    except OSError:
        return 0


def _children(pid):
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                out.append(int(name))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _run(folder, backup, weights=None, workers=None):
    r = subprocess.run(_command(folder, backup, weights, workers), cwd=folder, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def test_sigkilled_three_times_and_resumed_ends_with_the_same_weights(tmp_path):
    folder = tmp_path
    write_shapes_dataset(folder, count=8, width=64, height=64)
    with open(folder / "shapes.data", "a") as f:
        f.write("savelast = 1\n")
    (folder / "tiny.cfg").write_text(CFG)
    _run(folder, "whole")
    with open(folder / "whole" / "tiny_final.weights", "rb") as f:
        want = f.read()

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    log = folder / "cut" / "tiny_train.jsonl"
    last = os.path.join("cut", "tiny_last.weights")
    kills = []
    # kills aimed at the first half: a kill lands up to 50 ms after its target, several iterations of this tiny
    # network, and the next run must still be running when its own moment comes (targets near the end once let
    # a resumed run finish first)
    for target in sorted(rng.sample(range(2, ITERATIONS // 2), 3)):
        resume = last if os.path.exists(folder / last) else None
        target = max(target, _logged_iterations(log) + 1)   # the run resumed makes some progress first
        # 3 workers: processes writing batches into shared memory, which must not outlive a killed trainer
        proc = subprocess.Popen(_command(folder, "cut", resume, workers=3), cwd=folder, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # the log keeps the lines up to the checkpoint resumed from: wait for iteration `target`, then a moment more
        while _logged_iterations(log) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, f"(seed {seed}) the run ended before it was killed: " + proc.stderr.read().decode()
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        kills.append(_logged_iterations(log))
        deadline = time.monotonic() + 10   # the loader's workers (and the resource tracker) notice and end
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [c for c in children if _alive(c)], f"(seed {seed}) processes outlived the killed trainer"
        # whatever the moment, every checkpoint left behind loads, and _last has a state of its iteration
        for name in sorted(os.listdir(folder / "cut")):
            if name.endswith(".weights"):
                net = pydarknet.load(str(folder / "tiny.cfg"), str(folder / "cut" / name))
                assert net.iteration >= 1, (seed, name)
        from pydarknet.trainer import _matching_state
        at = pydarknet.load(str(folder / "tiny.cfg"), str(folder / last)).iteration
        assert _matching_state(str(folder / last), at)[0] is not None, (seed, kills, os.listdir(folder / "cut"))

    r = _run(folder, "cut", last, workers=3)
    assert "resuming from" in r.stderr and "without the training state" not in r.stderr, r.stderr[-2000:]
    with open(folder / "cut" / "tiny_final.weights", "rb") as f:
        got = f.read()
    assert got == want, f"(seed {seed}) killed after logged iterations {kills}: the final weights differ"
    assert not [n for n in os.listdir(folder / "cut") if n.endswith(".prev.state")]


def test_sigterm_saves_last_as_ctrl_c_does(tmp_path):
    """SIGTERM (a batch system's notice before it kills a job) ends training as Ctrl-C does: exit 130, _last
    and its state saved at the iteration reached, the way to resume printed, no worker left behind."""
    write_shapes_dataset(tmp_path, count=8, width=64, height=64)
    (tmp_path / "tiny.cfg").write_text(CFG.replace(f"max_batches={ITERATIONS}", "max_batches=5000"))
    proc = subprocess.Popen(_command(tmp_path, "bk", workers=3), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "bk" / "tiny_train.jsonl"
    deadline = time.monotonic() + 120
    while _logged_iterations(log) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, err[-2000:]
    done = pydarknet.load(str(tmp_path / "tiny.cfg"), str(tmp_path / "bk" / "tiny_last.weights")).iteration
    assert 5 <= done < 5000 and f"interrupted at iteration {done}: saved" in err and "resume with" in err
    from pydarknet.trainer import _matching_state
    assert _matching_state(str(tmp_path / "bk" / "tiny_last.weights"), done)[0] is not None
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [c for c in children if _alive(c)]
