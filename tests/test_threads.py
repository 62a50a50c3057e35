"""Networks and Python threads: one Network shared by several threads runs
their calls one at a time (its own lock), each getting its own results;
distinct networks run side by side in parallel and give what they give
alone; errors raised at the same time in several threads each carry their
own message (the C core's last error is per thread)."""
import threading

import numpy as np
import pytest

import pydarknet
from pydarknet._native import DarknetError
from pydarknet.synthetic import shapes_batch
from conftest import random_input, randomize
from helpers import conv, maxpool, params, section, small_yolo

THREADS = 4
ROUNDS = 15


def run_threads(work, n=THREADS):
    """Runs work(i) in n threads started together (a barrier); returns their
    results in thread order and re-raises the first exception one raised."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: B036 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def small_classifier(write_cfg, seed, name="cls.cfg"):
    """A 16x16 classifier of 5 classes: conv, maxpool, conv, avgpool, softmax."""
    text = (section("net", width=16, height=16, channels=3, batch=4, learning_rate=0.01, momentum=0.9, decay=0.0005)
            + conv(8, bn=True) + maxpool() + conv(5, size=1, activation="linear")
            + section("avgpool") + section("softmax"))
    net = pydarknet.load(write_cfg(text, name), threads=2)
    randomize(net, seed)
    return net


def same_outputs(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def test_one_network_shared_by_threads_gives_each_its_own_result(write_cfg):
    net = small_yolo(write_cfg, seed=3)
    # each thread its own input, of its own batch size (1 or 2: the calls also resize the shared network)
    inputs = [random_input((1 + i % 2, 3, 32, 32), seed=10 + i) for i in range(THREADS)]
    expected = [net.predict(x) for x in inputs]
    assert not same_outputs(expected[0], expected[2])  # distinct inputs give distinct outputs

    def work(i):
        return [same_outputs(net.predict(inputs[i]), expected[i]) for _ in range(ROUNDS)]

    assert run_threads(work) == [[True] * ROUNDS] * THREADS


def test_one_network_shared_by_threads_detects_each_its_own_image(write_cfg):
    net = small_yolo(write_cfg, seed=3)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(THREADS)]
    expected = [net.detect(img, thresh=0.05) for img in images]
    assert all(expected) and expected[0] != expected[1]

    def work(i):
        return [net.detect(images[i], thresh=0.05) == expected[i] for _ in range(ROUNDS)]

    assert run_threads(work) == [[True] * ROUNDS] * THREADS


def test_several_networks_in_several_threads_run_as_alone(write_cfg):
    nets = [small_yolo(write_cfg, seed=3, name="a.cfg"), small_yolo(write_cfg, seed=7, name="b.cfg"),
            small_classifier(write_cfg, seed=1, name="c.cfg"), small_classifier(write_cfg, seed=2, name="d.cfg")]
    inputs = [random_input((2,) + (net.channels, net.height, net.width), seed=20 + i) for i, net in enumerate(nets)]
    expected = [net.predict(x) for net, x in zip(nets, inputs)]
    assert not same_outputs(expected[0], expected[1]) and not same_outputs(expected[2], expected[3])

    def work(i):
        return [same_outputs(nets[i].predict(inputs[i]), expected[i]) for _ in range(ROUNDS)]

    assert run_threads(work) == [[True] * ROUNDS] * THREADS


def test_two_networks_trained_side_by_side_end_as_trained_one_after_the_other(write_cfg):
    x, t = shapes_batch(8, 32, seed=4)
    x16 = random_input((4, 3, 16, 16), seed=6)
    t16 = np.eye(5, dtype=np.float32)[[0, 3, 1, 4]]

    def make():
        return [small_yolo(write_cfg, subdivisions=2, seed=3, name="y.cfg"), small_classifier(write_cfg, seed=1)]

    def train(net, i, steps=4):
        return [net.train_batch(x, t) if i == 0 else net.train_batch(x16, t16) for _ in range(steps)]

    alone = make()
    alone_losses = [train(net, i) for i, net in enumerate(alone)]
    together = make()
    together_losses = run_threads(lambda i: train(together[i], i), n=2)
    assert together_losses == alone_losses
    for a, b in zip(alone, together):
        assert a.iteration == b.iteration == 4
        pa, pb = params(a), params(b)
        assert pa.keys() == pb.keys()
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    # training moved the weights, so the comparison above compared something
    fresh = params(make()[0])
    assert not all(np.array_equal(fresh[k], params(alone[0])[k]) for k in fresh)


def test_errors_at_once_in_several_threads_each_name_their_own_problem(write_cfg):
    nets = [small_yolo(write_cfg, seed=3, name="a.cfg"), small_classifier(write_cfg, seed=1, name="b.cfg")]

    def work(i):
        messages = []
        for k in range(200):
            bad = -(1000 * (i + 1) + k)
            with pytest.raises(DarknetError) as err:
                if i % 2:
                    nets[i % 2].set_threads(bad)  # a C check of another kind on another network
                else:
                    nets[i % 2].resize(width=bad)
            messages.append(str(err.value))
        return messages

    results = run_threads(work)
    for i, messages in enumerate(results):
        for k, msg in enumerate(messages):
            bad = -(1000 * (i + 1) + k)
            want = f"thread count must be at least 1, got {bad}" if i % 2 else f"width={bad}"
            assert msg.endswith(want), (i, k, msg)
    # the networks still work afterwards
    assert nets[0].width == 32 and nets[1].threads == 2
    assert nets[1].predict(random_input((1, 3, 16, 16)))[0].shape == (1, 5, 1, 1)
