"""The gradient block and the bucket hook, in the C core without MPI: every
parameter gradient lives in one block of floats, and dn_net_train_batch hands
ranges of it to the bucket hook as soon as their values are final (during the
last mini-batch's backward pass, later layers first), so that a data-parallel
all-reduce can overlap the backward pass (pydarknet/distributed.py;
tests/test_distributed.py runs it over MPI).

What would show a range handed over too early: a hook that doubles its range
in place (what summing over two ranks holding the same images does) together
with a gradient hook that doubles the image count trains exactly the weights
of a plain run, bit for bit (doubling is exact in float arithmetic and the
update divides by the doubled count), unless a later backward pass added to a
range after it was doubled."""
import numpy as np
import pytest

import pydarknet
from pydarknet._native import DarknetError, check, ffi, lib
from pydarknet.synthetic import shapes_batch
from conftest import randomize
from helpers import conv, section, shapes_head

# a detector with batch norm, a residual [shortcut], a [route] and two [yolo] heads: gradients of every kind
CFG = (section("net", width=32, height=32, channels=3, batch=6, subdivisions=3, learning_rate=0.01, momentum=0.9,
               decay=0.0005)
       + conv(8, stride=2, bn=True) + conv(8, bn=True) + section("shortcut", **{"from": -2}, activation="linear")
       + conv(16, stride=2, bn=True) + shapes_head("4,4, 8,8, 12,12")
       + section("route", layers=-4) + shapes_head("6,6, 10,10, 14,14"))

BUCKET = 200   # floats: several ranges for this network's 2,632 gradients


def block(net):
    data, count = ffi.new("float **"), ffi.new("size_t *")
    check(lib.dn_net_gradient_block(net._ptr, data, count))
    return np.frombuffer(ffi.buffer(data[0], count[0] * 4), np.float32)


def make(write_cfg, text=CFG):
    net = pydarknet.load(write_cfg(text, "net.cfg"))
    randomize(net, 3)
    net.enable_training()
    return net


def params(net):
    return {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}


class Recorder:
    """Bucket and gradient hooks that record what they were handed (and double it when asked)."""

    def __init__(self, net, bucket, double=False):
        self.ranges, self.at_handover, self.first_seen, self.final = [], [], None, []
        values = block(net)

        @ffi.callback("dn_status(dn_net *, void *, size_t, size_t)")
        def bucket_hook(ptr, user, offset, count):
            if self.first_seen is None:
                self.first_seen = values.copy()
            self.ranges.append((int(offset), int(count)))
            if double:
                values[offset:offset + count] *= 2
            self.at_handover.append(values[offset:offset + count].copy())
            return lib.DN_OK

        @ffi.callback("dn_status(dn_net *, void *, unsigned long long *)")
        def gradient_hook(ptr, user, images):
            self.final.append(values.copy())
            if double:
                images[0] *= 2
            return lib.DN_OK

        self._keep = bucket_hook, gradient_hook
        check(lib.dn_net_set_bucket_hook(net._ptr, bucket_hook, ffi.NULL, bucket))
        check(lib.dn_net_set_gradient_hook(net._ptr, gradient_hook, ffi.NULL))


@pytest.mark.parametrize("threads", [1, 2])
def test_each_range_is_final_when_handed_over_and_the_ranges_cover_the_block(write_cfg, threads):
    net = make(write_cfg)
    net.set_threads(threads)
    total = lib.dn_net_gradient_count(net._ptr)
    assert block(net).size == total > 10 * BUCKET
    rec = Recorder(net, BUCKET)
    x, t = shapes_batch(6, 32, seed=4)
    net.train_batch(x, t)
    assert len(rec.final) == 1 and len(rec.ranges) >= 4
    # highest offsets first, contiguous, the whole block once; each range but the last at least a bucket
    ends = [o + c for o, c in rec.ranges]
    assert ends[0] == total and rec.ranges[-1][0] == 0
    assert all(rec.ranges[i + 1][0] + rec.ranges[i + 1][1] == rec.ranges[i][0] for i in range(len(rec.ranges) - 1))
    assert all(c >= BUCKET for _, c in rec.ranges[:-1])
    for (o, c), got in zip(rec.ranges, rec.at_handover):
        assert np.array_equal(got, rec.final[0][o:o + c])
    # handed over during the backward pass: when the first range went, the first layer's gradients were not final
    first_layer = slice(0, rec.ranges[-1][1])
    assert not np.array_equal(rec.first_seen[first_layer], rec.final[0][first_layer])


def test_ranges_doubled_in_place_as_they_come_train_the_plain_weights_bit_for_bit(write_cfg):
    x, t = shapes_batch(12, 32, seed=4)
    plain, doubled = make(write_cfg), make(write_cfg)
    rec = Recorder(doubled, BUCKET, double=True)
    for k in range(2):
        plain.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
        doubled.train_batch(x[6 * k:6 * k + 6], t[6 * k:6 * k + 6])
    assert len(rec.final) == 2 and len(rec.ranges) >= 8
    a, b = params(plain), params(doubled)
    changed = 0
    for k in a:
        assert np.array_equal(a[k], b[k]), k
        changed += 1
    assert changed and lib.dn_net_seen(doubled._ptr) == 2 * lib.dn_net_seen(plain._ptr)


def test_without_a_bucket_size_one_range_after_the_backward_pass(write_cfg):
    net = make(write_cfg)
    rec = Recorder(net, 0)
    x, t = shapes_batch(6, 32, seed=4)
    net.train_batch(x, t)
    assert rec.ranges == [(0, lib.dn_net_gradient_count(net._ptr))]
    assert np.array_equal(rec.at_handover[0], rec.final[0])
    assert np.array_equal(rec.first_seen, rec.final[0])


def test_a_stopped_backward_pass_still_hands_over_the_whole_block(write_cfg):
    """stopbackward=1 on the third layer: the layers below it are frozen (no gradients); the ranges still cover
    the block, the last one when the pass stops."""
    text = CFG.replace("[shortcut]\n", "[shortcut]\nstopbackward=1\n")
    net = make(write_cfg, text)
    rec = Recorder(net, BUCKET)
    x, t = shapes_batch(6, 32, seed=4)
    net.train_batch(x, t)
    ends = [o + c for o, c in rec.ranges]
    assert ends[0] == lib.dn_net_gradient_count(net._ptr) and rec.ranges[-1][0] == 0
    assert sum(c for _, c in rec.ranges) == ends[0]
    for (o, c), got in zip(rec.ranges, rec.at_handover):
        assert np.array_equal(got, rec.final[0][o:o + c])


def test_a_failing_bucket_hook_stops_the_iteration_without_an_update(write_cfg):
    net = make(write_cfg)
    before = params(net)

    @ffi.callback("dn_status(dn_net *, void *, size_t, size_t)")
    def failing(ptr, user, offset, count):
        return lib.DN_ERR_STATE

    check(lib.dn_net_set_bucket_hook(net._ptr, failing, ffi.NULL, BUCKET))
    x, t = shapes_batch(6, 32, seed=4)
    with pytest.raises(DarknetError):
        net.train_batch(x, t)
    after = params(net)   # the rolling statistics moved in the forward passes, as in any failed iteration
    assert all(np.array_equal(before[k], after[k]) for k in before if not k[1].startswith("rolling_"))
    assert lib.dn_net_iteration(net._ptr) == 0
    assert not block(net).any()   # the gradients of the failed iteration are gone
    check(lib.dn_net_set_bucket_hook(net._ptr, ffi.NULL, ffi.NULL, 0))
    net.train_batch(x, t)         # and the next one trains
    assert lib.dn_net_iteration(net._ptr) == 1


def test_the_block_needs_training(write_cfg):
    net = pydarknet.load(write_cfg(CFG, "net.cfg"))
    with pytest.raises(DarknetError, match="training is not enabled"):
        block(net)
