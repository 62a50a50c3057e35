"""The project's AP against pycocotools' COCOeval on the same seeded random
detections and truths (several images, classes, overlapping detections).

Where the definitions match, the numbers must agree to float64 rounding.
The known differences, and how the cases avoid them:

* Matching. darknet pairs a detection with its best-IoU truth and counts it a
  false positive when a more confident detection took that truth; COCO takes
  the best truth still free. They agree when no detection overlaps two truths
  of its class above the threshold: truths of one class that do not overlap
  each other ensure it for IoU >= .5 (a box with IoU > .5 against a truth
  covers more than half of itself with it, so it cannot do so with a second,
  disjoint truth). The first case builds such truths and compares darknet's
  matching; the second lets truths overlap and compares matching="coco",
  which follows COCOeval's rule, and checks that darknet's matching does give
  other numbers there (so the comparison can see the difference).
* IoU equal to the threshold: COCO matches at IoU >= t, darknet at > t; random
  boxes never land exactly on a threshold.
* Recall points: COCO's are np.linspace(0, 1, 101), some of which lie an ulp
  above i/100 (0.35, 0.41, 0.7 ...), so COCO does not count a recall of exactly
  7/20 as reaching 0.35; the project divides i/100 as darknet does. Each class
  here has a number of truths prime to 10, so no recall k/n equals any i/100
  but 0 and 1.
* COCO ignores crowd truths and truths outside its area range and keeps at
  most maxDets detections per image and class: there are no crowd truths, the
  area range is 'all' and no image has 100 detections (COCOeval's maxDets).
* Classes without truths: COCO leaves them out of the mean, as the project's
  mAP does (darknet's own mean counts them as 0).
"""
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pydarknet.evaluate import COCO_IOUS, evaluate

SIZE = 100.0   # image side, in the units of the boxes (COCO's 'all' area range holds every box)
CLASSES = 4    # class 3 gets detections but no truths


def _jitter(rng, box, scale):
    x, y, w, h = box
    return (x + rng.normal(0, scale * w), y + rng.normal(0, scale * h),
            w * np.exp(rng.normal(0, scale)), h * np.exp(rng.normal(0, scale)))


def _disjoint_truths(rng, images):
    """Truths on a 4x4 grid of cells, at most one per cell: none overlaps another."""
    cell = SIZE / 4
    out = []
    for _ in range(images):
        rows = []
        for cx in range(4):
            for cy in range(4):
                if rng.random() < 0.6:
                    w, h = rng.uniform(0.3, 0.9, 2) * cell
                    x = cx * cell + rng.uniform(w / 2, cell - w / 2)
                    y = cy * cell + rng.uniform(h / 2, cell - h / 2)
                    rows.append((rng.integers(0, CLASSES - 1), x, y, w, h))
        out.append(np.array(rows, np.float64).reshape(-1, 5))
    return out


def _overlapping_truths(rng, images):
    """Clusters of truths that overlap each other."""
    out = []
    for _ in range(images):
        rows = []
        for _ in range(rng.integers(2, 5)):
            k = rng.integers(0, CLASSES - 1)
            base = (rng.uniform(20, 80), rng.uniform(20, 80), rng.uniform(10, 30), rng.uniform(10, 30))
            for _ in range(rng.integers(1, 4)):
                rows.append((k, *_jitter(rng, base, 0.15)))
        out.append(np.array(rows, np.float64).reshape(-1, 5))
    return out


def _counts_prime_to_ten(truths):
    """Drops truths (from the last images) until every class's count is prime to 10."""
    truths = [t.copy() for t in truths]
    for k in range(CLASSES):
        while True:
            n = sum(int(np.sum(t[:, 0] == k)) for t in truths)
            if n == 0 or (n % 2 and n % 5):
                break
            i = max(i for i, t in enumerate(truths) if np.any(t[:, 0] == k))
            j = int(np.nonzero(truths[i][:, 0] == k)[0][-1])
            truths[i] = np.delete(truths[i], j, axis=0)
    return truths


def _detections(rng, truths):
    """Near copies of most truths (some twice, some of another class), and
    random boxes; random distinct scores."""
    out = []
    for tru in truths:
        rows = []
        for k, *box in tru:
            for _ in range(rng.choice([0, 1, 1, 2])):
                rows.append((k, *_jitter(rng, box, 0.12)))
            if rng.random() < 0.1:
                rows.append(((k + 1) % CLASSES, *_jitter(rng, box, 0.05)))
        for _ in range(rng.integers(1, 5)):
            rows.append((rng.integers(0, CLASSES), *rng.uniform(10, 90, 2), *rng.uniform(5, 30, 2)))
        dets = np.array(rows, np.float64).reshape(-1, 5)
        out.append(np.c_[dets[:, :1], rng.random(len(dets)), dets[:, 1:]])
    return out


def _cocoeval(detections, truths, capsys):
    """COCOeval (bbox) of the same boxes: its precision table [T, R, K] and
    its two headline numbers (AP@.5:.95, AP@.5)."""
    def corner(x, y, w, h):
        return [float(x - w / 2), float(y - h / 2), float(w), float(h)]

    anns = []
    for i, tru in enumerate(truths):
        for k, *b in tru:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(k), "bbox": corner(*b),
                         "area": float(b[2] * b[3]), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(len(truths))], "annotations": anns,
                  "categories": [{"id": k} for k in range(CLASSES)]}
    gt.createIndex()
    dt = gt.loadRes([{"image_id": i, "category_id": int(k), "bbox": corner(*b), "score": float(s)}
                     for i, dets in enumerate(detections) for k, s, *b in dets])
    e = COCOeval(gt, dt, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    capsys.readouterr()   # COCOeval's progress lines
    assert np.allclose(e.params.iouThrs, COCO_IOUS)
    return e.eval["precision"][:, :, :, 0, -1], e.stats[0], e.stats[1]


def _coco_ap(precision, t, k):
    p = precision[t, :, k]
    return None if np.all(p == -1) else float(np.mean(p))


def _compare(detections, truths, matching, capsys):
    precision, map_50_95, map_50 = _cocoeval(detections, truths, capsys)
    assert max(len(d) for d in detections) < 100   # COCOeval's maxDets
    for t, iou in enumerate(COCO_IOUS):
        r = evaluate(detections, truths, CLASSES, iou_thresh=iou, points=101, matching=matching)
        for k in range(CLASSES):
            coco = _coco_ap(precision, t, k)
            if coco is None:   # no truths of class k
                assert r.classes[k].truths == 0
            else:
                assert r.classes[k].ap == pytest.approx(coco, abs=1e-9), (iou, k)
        if iou == 0.5:
            assert r.map == pytest.approx(map_50, abs=1e-9)
            assert r.map_50_95 == pytest.approx(map_50_95, abs=1e-9)
    return map_50_95


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_darknet_matching_agrees_with_cocoeval_on_disjoint_truths(seed, capsys):
    rng = np.random.default_rng(seed)
    truths = _counts_prime_to_ten(_disjoint_truths(rng, 8))
    detections = _detections(rng, truths)
    assert sum(len(d) for d in detections) > 50 and 0 < _compare(detections, truths, "darknet", capsys) < 1


@pytest.mark.parametrize("seed", [4, 5])
def test_coco_matching_agrees_with_cocoeval_on_overlapping_truths(seed, capsys):
    rng = np.random.default_rng(seed)
    truths = _counts_prime_to_ten(_overlapping_truths(rng, 10))
    detections = _detections(rng, truths)
    coco = _compare(detections, truths, "coco", capsys)
    darknet = evaluate(detections, truths, CLASSES, points=101).map_50_95
    assert abs(darknet - coco) > 1e-4   # the overlapping truths do tell the two matchings apart
