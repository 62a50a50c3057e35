"""mAP on hand-made cases whose answers are worked out by hand."""
import numpy as np
import pytest

from pydarknet.evaluate import average_precision, evaluate

T = [np.array([[0, .2, .2, .1, .1], [0, .7, .7, .1, .1]])]
D = [np.array([[0, .9, .2, .2, .1, .1], [0, .8, .5, .5, .1, .1], [0, .7, .7, .7, .1, .1]])]


def test_all_points_and_eleven_points():
    # ranks: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert evaluate(D, T, 1).map == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert evaluate(D, T, 1, points=11).map == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11)
    assert evaluate(D, T, 1, points=101).map == pytest.approx((51 * 1 + 50 * (2 / 3)) / 101)


def test_duplicate_detection_is_a_false_positive():
    d = [np.array([[0, .9, .2, .2, .1, .1], [0, .8, .21, .2, .1, .1]])]
    r = evaluate(d, [T[0][:1]], 1, conf_thresh=0.5)
    assert r.classes[0].ap == pytest.approx(1.0) and (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_wrong_class_and_low_overlap_do_not_count():
    d = [np.array([[1, .9, .2, .2, .1, .1], [0, .8, .26, .2, .1, .1]])]  # second: IoU 0.25 with truth 0
    r = evaluate(d, [T[0][:1]], 2)
    assert r.classes[0].ap == 0.0 and r.classes[1].truths == 0
    assert r.map == 0.0  # classes without truths are left out of the mean


def test_iou_threshold():
    d = [np.array([[0, .9, .22, .2, .1, .1]])]  # IoU = 0.08 / 0.12 = 2/3
    assert evaluate(d, [T[0][:1]], 1, iou_thresh=0.6).map == pytest.approx(1.0)
    assert evaluate(d, [T[0][:1]], 1, iou_thresh=0.7).map == 0.0


def test_perfect_and_empty():
    assert evaluate([np.c_[T[0][:, :1], np.ones(2), T[0][:, 1:]]], T, 1).map == pytest.approx(1.0)
    assert evaluate([np.zeros((0, 6))], T, 1).map == 0.0
    assert average_precision([], []) == 0.0
