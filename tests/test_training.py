"""Training mechanics: subdivisions accumulate to the same step as one big
mini-batch, training resumes exactly from saved weights and state, and bad
inputs are refused or reported instead of being trained on."""
import logging

import numpy as np
import pytest

import pydarknet
from pydarknet.synthetic import shapes_batch
from conftest import randomize
from helpers import params, small_yolo, small_yolo_cfg, trained


def test_subdivisions_accumulate_to_the_same_update(write_cfg):
    one, l1 = trained(write_cfg, 1, 2, name="a.cfg")
    four, l4 = trained(write_cfg, 4, 2, name="b.cfg")
    assert one.mini_batch == 8 and four.mini_batch == 2
    np.testing.assert_allclose(l1, l4, rtol=1e-4)
    a, b = params(one), params(four)
    for k in a:
        scale = np.abs(a[k]).max() + 1e-12
        assert np.abs(a[k] - b[k]).max() <= 1e-5 * scale + 1e-6, k


def test_training_changes_weights_and_counts(write_cfg):
    net, losses = trained(write_cfg, 2, 3)
    assert net.iteration == 3 and net.seen == 24
    assert all(np.isfinite(losses))


def test_resume_continues_exactly(write_cfg, tmp_path):
    x, t = shapes_batch(8, 32, seed=5)
    cfg = write_cfg(small_yolo_cfg(2, "burn_in=3\nadam=1"))
    a = pydarknet.load(cfg)
    randomize(a, 1)
    for _ in range(2):
        a.train_batch(x, t)
    a.save_weights(tmp_path / "w.weights")
    a.save_training_state(tmp_path / "w.state")
    for _ in range(2):
        a.train_batch(x, t)

    b = pydarknet.load(cfg, tmp_path / "w.weights")
    assert b.seen == 16 and b.iteration == 2
    b.load_training_state(tmp_path / "w.state")
    for _ in range(2):
        b.train_batch(x, t)
    assert b.iteration == a.iteration == 4
    pa, pb = params(a), params(b)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


def test_nan_input_is_refused(write_cfg):
    net = small_yolo(write_cfg)
    x, t = shapes_batch(8, 32, seed=1)
    x[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="input image 3 of the batch has NaN"):
        net.train_batch(x, t)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, np.float32(-np.nan)])
def test_first_nonfinite_image_is_named(write_cfg, bad):
    net = small_yolo(write_cfg)
    x, t = shapes_batch(8, 32, seed=1)
    x[6, 2, 31, 31] = bad                 # the last value of an image
    x[5, 0, 0, 0] = bad                   # and the first of an earlier one: that one is named
    x[2] = np.finfo(np.float32).max       # the largest finite value is not refused
    x[1] = np.finfo(np.float32).tiny / 2  # nor a subnormal
    with pytest.raises(ValueError, match="input image 5 of the batch has NaN or infinite"):
        net.train_batch(x, t)
    x[5, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="input image 6 of the batch"):
        net.train_batch(x, t)
    x[6, 2, 31, 31] = 0.5
    x[[1, 2]] = 0.5
    assert np.isfinite(net.train_batch(x, t))


def test_yolo_loss_is_the_same_on_any_number_of_threads(write_cfg):
    """The [yolo] loss runs its images on the worker threads, each with its
    own scratch: one thread and three give the same loss and gradients, bit
    for bit (the images' losses are summed in image order either way)."""
    # iou_thresh < 1 takes step 3 (the box terms shared among the positive classes) too
    cfg = write_cfg(small_yolo_cfg().replace("[yolo]", "[yolo]\niou_thresh=0.2\nlabel_smooth_eps=0.1"), "net.cfg")
    x, t = shapes_batch(8, 32, seed=4)
    out = []
    for threads in (1, 3):
        net = pydarknet.load(cfg, threads=threads)
        randomize(net, 5)
        loss = net.train_batch(x, t)
        out.append((loss, {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}))
    assert out[0][0] == out[1][0]
    for k in out[0][1]:
        np.testing.assert_array_equal(out[0][1][k], out[1][1][k], err_msg=str(k))


def test_bad_truth_rows_are_reported_and_left_out(write_cfg, caplog):
    net = small_yolo(write_cfg, seed=2)
    x, t = shapes_batch(8, 32, seed=1)
    t[2, 5] = [0.5, 0.5, 0.2, 0.2, 7]       # class out of range
    t[4, 6] = [1.4, 0.5, 0.2, 0.2, 1]       # box outside the image
    t[5, 7] = [0.5, np.nan, 0.2, 0.2, 1]    # NaN
    clean = t.copy()
    clean[2, 5] = clean[4, 6] = clean[5, 7] = 0
    twin = small_yolo(write_cfg, seed=2, name="twin.cfg")
    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        loss = net.train_batch(x, t)
    messages = " ".join(r.message for r in caplog.records)
    assert "truth row 5 of image 2 has class 7, outside 0..2" in messages
    assert "truth row 6 of image 4 has a box" in messages and "truth row 7 of image 5 has NaN" in messages
    assert loss == pytest.approx(twin.train_batch(x, clean), rel=1e-6)


def test_non_finite_loss_stops_without_touching_weights(write_cfg):
    net = small_yolo(write_cfg, seed=2)
    net.layers[2].params["biases"][:] = np.inf  # a diverged head
    before = params(net)
    x, t = shapes_batch(8, 32, seed=1)
    with pytest.raises(pydarknet.DarknetError, match="loss is not finite"):
        net.train_batch(x, t)
    after = params(net)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert net.iteration == 0
