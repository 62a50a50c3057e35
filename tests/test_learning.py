"""Evidence that training learns: a small yolo network trained on synthetic
shapes detects them afterwards, and a small classifier reaches high accuracy.
Sizes are kept small so both finish in seconds on two CPU cores."""
import numpy as np

import pydarknet
from pydarknet.synthetic import shapes_batch
from conftest import randomize
from helpers import SHAPES_BACKBONE, conv, learn_shapes, maxpool, section, shapes_head, train_cycling

DETECTOR = SHAPES_BACKBONE + shapes_head("8,8, 13,13, 20,20", iou_loss="ciou", iou_normalizer=0.07, ignore_thresh=".7")


def test_small_yolo_learns_to_detect_shapes(write_cfg):
    start, end, found, total = learn_shapes(write_cfg, DETECTOR)
    assert end < 0.25 * start, (start, end)
    # the trained network finds the shapes it saw, with the right class
    assert found >= 0.8 * total, f"{found} of {total} shapes found"


CLASSIFIER = (section("net", width=32, height=32, channels=3, batch=32, learning_rate=0.003, adam=1, decay=0.0005,
                      burn_in=10)
              + conv(16, bn=True) + maxpool() + conv(32, bn=True) + maxpool() + conv(3, size=1, activation="linear")
              + section("avgpool") + section("softmax", groups=1))


def test_small_classifier_reaches_high_accuracy(write_cfg):
    net = pydarknet.load(write_cfg(CLASSIFIER))
    randomize(net, 1)
    x, t = shapes_batch(128, 32, per_image=(1, 1), seed=3)
    labels = t[:, 0, 4].astype(int)
    onehot = np.eye(3, dtype=np.float32)[labels]
    train_cycling(net, x, onehot, 200, batch=32)
    (probs,) = net.predict(x)
    accuracy = (probs.reshape(128, 3).argmax(axis=1) == labels).mean()
    assert accuracy >= 0.9, accuracy
    # and on shapes it never saw
    xv, tv = shapes_batch(128, 32, per_image=(1, 1), seed=99)
    (probs,) = net.predict(xv)
    assert (probs.reshape(128, 3).argmax(axis=1) == tv[:, 0, 4].astype(int)).mean() >= 0.8
