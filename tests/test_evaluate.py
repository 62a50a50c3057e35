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


# Three disjoint truths A, B, C of class 0; five detections ranked by confidence:
#   .9 on A (TP), .8 on nothing (FP), .7 on B (TP), .6 again on A (FP, A is taken), .5 on C (TP)
# precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1
# interpolated (best precision at this recall or beyond): 1 up to 1/3, 2/3 up to 2/3, 3/5 up to 1
A, B, C = (.2, .2, .1, .1), (.5, .5, .1, .1), (.8, .8, .1, .1)
T3 = [np.array([[0, *A], [0, *B], [0, *C]])]
D5 = [np.array([[0, .9, *A], [0, .8, .5, .2, .1, .1], [0, .7, *B], [0, .6, .21, .2, .1, .1], [0, .5, *C]])]


@pytest.mark.parametrize("matching", ["darknet", "coco"])
def test_three_truths_five_detections(matching):
    # area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    assert evaluate(D5, T3, 1, matching=matching).map == pytest.approx(34 / 45)
    # 11 points: r = 0 .. .3 -> 1 (4 points), .4 .. .6 -> 2/3 (3), .7 .. 1 -> 3/5 (4)
    assert evaluate(D5, T3, 1, points=11, matching=matching).map == pytest.approx((4 + 3 * 2 / 3 + 4 * .6) / 11)
    # 101 points: i = 0 .. 33 -> 1 (34 points), 34 .. 66 -> 2/3 (33), 67 .. 100 -> 3/5 (34)
    assert evaluate(D5, T3, 1, points=101, matching=matching).map == pytest.approx((34 + 33 * 2 / 3 + 34 * .6) / 101)


def test_counts_at_the_confidence_threshold():
    # above .55: ranks 1-4, TP A and B, FP the stray box and the duplicate; C is missed
    r = evaluate(D5, T3, 1, conf_thresh=.55)
    assert (r.tp, r.fp, r.fn) == (2, 2, 1) and (r.classes[0].tp, r.classes[0].fp) == (2, 2)
    assert r.precision == pytest.approx(.5) and r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 * .5 * (2 / 3) / (.5 + 2 / 3))
    # darknet's average IoU: the TPs' IoUs (1 and 1) over TP + FP = 4 detections
    assert r.avg_iou == pytest.approx(.5)
    # a confidence equal to the threshold does not count (darknet: prob > thresh)
    assert evaluate(D5, T3, 1, conf_thresh=.5).tp == 2


def test_darknet_and_coco_matching_differ_on_overlapping_truths():
    # boxes of height 1 on one row; truths T1 = [0, 10], T2 = [2, 12] overlap (IoU 8/12)
    # D1 = [0, 10] (.9): T1 IoU 1.  D2 = [.5, 10.5] (.8): T1 IoU 9.5/10.5 = .905, T2 IoU 8.5/11.5 = .739
    t = [np.array([[0, 5, .5, 10, 1], [0, 7, .5, 10, 1]])]
    d = [np.array([[0, .9, 5, .5, 10, 1], [0, .8, 5.5, .5, 10, 1]])]
    # darknet: D2's best truth T1 is taken -> FP: recall 1/2 at precision 1, AP = 1/2
    assert evaluate(d, t, 1).map == pytest.approx(.5)
    # COCO: D2 takes the best free truth, T2 (.739 >= .5) -> TP: AP = 1
    assert evaluate(d, t, 1, matching="coco").map == pytest.approx(1.0)
    # above IoU .739 T2 is out of reach for both
    assert evaluate(d, t, 1, iou_thresh=.75, matching="coco").map == pytest.approx(.5)


def test_map_over_iou_range():
    # one truth of side 1, one detection moved by .16: IoU = .84 / 1.16 = .724, matched at .50 .. .70 (5 of 10)
    r = evaluate([np.array([[0, .9, .66, .5, 1, 1]])], [np.array([[0, .5, .5, 1, 1]])], 1)
    assert sorted(t for t, m in r.maps_by_iou.items() if m == 1.0) == [.5, .55, .6, .65, .7]
    assert r.map_50_95 == pytest.approx(.5)
    assert evaluate(D5, T3, 1, iou_range=False).map_50_95 is None


def test_classes_without_truths_and_darknet_mean():
    # class 1 has a detection but no truth: left out of the mean; darknet divides by both classes
    d = [np.r_[D5[0], [[1, .95, .4, .4, .1, .1]]]]
    r = evaluate(d, T3, 2)
    assert r.map == pytest.approx(34 / 45) and r.map_all_classes == pytest.approx(34 / 45 / 2)
    assert r.classes[1].truths == 0 and r.classes[1].fp == 1


def test_average_precision_points_reach_exact_recalls():
    # recall 7/20 = .35 reaches the 101-point .35 (np.linspace puts .35 an ulp above 7/20)
    recall = np.array([7 / 20, 7 / 20])
    precision = np.array([1.0, .5])
    assert average_precision(recall, precision, 101) == pytest.approx(36 / 101)
