"""The training data pipeline: darknet's dataset files, its augmentation, and
a loader that makes batches in the background.

    from pydarknet.data import DetectionLoader

    net = pydarknet.load("yolo-obj.cfg")
    with DetectionLoader.from_files("obj.data", net, seed=1, workers=2) as loader:
        for k, (x, truths) in enumerate(loader.iterate(start=net.iteration), net.iteration):
            if x.shape[2:] != (net.height, net.width):
                net.resize(height=x.shape[2], width=x.shape[3])   # multi-scale ([yolo] random)
            loss = net.train_batch(x, truths)
    print(loader.summary.report())
"""
from .augment import (ClassifierAugment, DetectionAugment, ListSource, classifier_sample, detection_sample,
                      rand_scale, to_chw)
from .cache import ImageCache
from .issues import ISSUE_KINDS, DataError, DataSummary, Issue
from .lists import (IMAGE_EXTENSIONS, ClassificationDataset, DetectionDataset, label_path, label_paths,
                    read_image, read_image_list, read_labels)
from .loader import (ClassifierLoader, DetectionLoader, MultiScale, max_network_size, next_network_size,
                     sample_rng, default_backend)

__all__ = [
    "DetectionLoader", "ClassifierLoader", "MultiScale", "next_network_size", "max_network_size", "sample_rng",
    "default_backend",
    "DetectionAugment", "ClassifierAugment", "detection_sample", "classifier_sample", "ListSource",
    "rand_scale", "to_chw",
    "DetectionDataset", "ClassificationDataset", "read_image_list", "read_labels", "read_image", "label_path",
    "label_paths", "IMAGE_EXTENSIONS",
    "DataError", "DataSummary", "Issue", "ISSUE_KINDS", "ImageCache",
]
