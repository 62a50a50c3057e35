"""darknet's ``classifier`` command: train, predict and valid for networks
that end in a [softmax] (then optionally a [cost]), such as darknet19.

    pydarknet classifier train   <data> <cfg> [weights] [-topk] [-clear] [-seed N] ...
    pydarknet classifier predict <data> <cfg> <weights> [image] [-t N]
    pydarknet classifier valid   <data> <cfg> <weights>

    net = pydarknet.load("classifier.cfg", "classifier.weights", names="labels.txt")
    for c in net.classify(cv2.imread("cat.jpg"), top=5):
        print(c.name, c.probability)

The .data keys are darknet's: ``classes``, ``train``, ``valid`` (the train
list when missing), ``labels`` (the class names, one a line; predict reads
``names`` first), ``backup`` and ``top`` (how many classes predict lists and
valid counts as top-k; darknet's default 1, -topk during training 5; capped
at ``classes``). An image's class is the first label whose name is part of
its path (darknet's fill_truth and validate_classifier_single), so
``train/circle_00012.png`` is a circle; names must not occur in the folders
above the images.

Images are prepared as darknet's predict and valid prepare them
(``resize_min`` then ``crop_image``): resized with darknet's bilinear resize
so the shorter side is the network width, then the centred network-size
window. ``valid`` is darknet's ``validate_classifier_single``; the multi-crop
and multi-scale variants (validcrop, valid10, validmulti, validfull) are not
provided.

Output, standard output as darknet's (notes and warnings on standard error):

* train: ``<cfg-name>``, the learning-rate line, the number of training
  images, then per iteration
  ``<iteration>, <epoch>: <loss>, <avg> avg, <rate> rate, <s> seconds, <images> images, <h> hours left``
  and with -topk ``accuracy top1 = <fraction>`` and darknet's
  ``accuracy top<k> = <fraction>`` every max(2 epochs,
  burn_in, 100) iterations and at the end. Checkpoints, the .state file,
  resume, the JSON log and the chart are detector train's
  (pydarknet.trainer).
* predict: ``<path>: Predicted in <ms> milli-seconds.``, then one
  ``%5.2f%%: <name>`` line per class, most probable first (the original
  darknet's line; AlexeyAB's fork prints ``<name>: <probability>`` and two
  debugging lines, which are left out).
* valid: `` TOP calculation...``, a blank line, then after each image the
  running accuracies ``<i>: top 1: <fraction>, top <k>: <fraction>``.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .cfg import parse_cfg
from .classification import Classification, ClassifierError, classify_output, require_classifier, top_k
from .commands import (EXIT_FAILURE, EXIT_OK, TRAIN_ERRORS, CliError, add_gpu_flag, add_model_files, cache_budget,
                       add_training_flags, flag, load_network, note, order_data_cfg, positive_int, read_image,
                       stdin_paths, training_watch, warnings_as_notes)
from .data import ClassificationDataset, ClassifierAugment, ClassifierLoader, default_backend
from .datafiles import DATA_DEFAULTS, load_data_file, read_names
from .network import Network
from .train_checks import TrainError, check_positive, check_readable
from .trainer import TrainTask, copy_params, rate_line, train_network

__all__ = ["Classification", "ClassifierError", "ValidResult", "train_classifier", "validate", "top_k",
           "classify_output", "require_classifier", "class_names", "add_parser", "add_classifier_parser"]

TRAIN_TOPK = 5       # darknet's top= default for -topk during training
DEFAULT_TOP = 1      # darknet's top= default for predict and valid


# ----------------------------------------------------------------------------- the .data file and the network

def _outputs(net) -> int:
    return int(np.prod(net.output_layers[0].shape))


def class_names(df, keys=("labels",)):
    """(names, path) from the first of `keys` the .data file has, else from
    darknet's default file of the last key; ClassifierError naming the key
    and the path when it cannot be read or is empty."""
    key = next((k for k in keys if k in df.options), None)
    if key is None:
        key = keys[-1]
        path = df.path_of(key)
        if not os.path.exists(path):
            raise ClassifierError(f"{df.path}: no '{key} = <file>' entry naming the class names file, and "
                                  f"darknet's default {DATA_DEFAULTS.get(key, path)} does not exist")
    path = df.path_of(key)
    _check_names_file(path, f" ({key}= in {df.path})")
    names = read_names(path)
    if not names:
        raise ClassifierError(f"{path}: the class names file ({key}= in {df.path}) has no names")
    return names, path


def _check_names_file(path, origin):
    try:
        check_readable(path, "the class names file", origin)
    except TrainError as e:
        raise ClassifierError(str(e)) from None


def _check_classes(df, names, names_path, net=None, cfg=None):
    """classes= of the .data file, the names and the network's outputs agree."""
    if "classes" in df.options and df.classes != len(names):
        raise ClassifierError(f"{df.path}: classes = {df.classes} but {names_path} has {len(names)} names")
    if net is not None and _outputs(net) != len(names):
        raise ClassifierError(f"{cfg}: the last layer gives {_outputs(net)} outputs but there are {len(names)} "
                              f"classes ({names_path}); the last [convolutional] or [connected] layer needs "
                              f"filters={len(names)}")


def _top_of(df, default):
    raw = df.options.get("top")
    if raw is None:
        return default
    try:
        top = int(raw)
    except ValueError:
        raise ClassifierError(f"{df.path}: top = {raw!r} is not a whole number") from None
    if top < 1:
        raise ClassifierError(f"{df.path}: top = {top}; at least 1 is needed")
    return top


# ----------------------------------------------------------------------------- valid

@dataclass
class ValidResult:
    """Accuracy over an image list (darknet's validate_classifier_single)."""
    images: int          # images counted
    top1: float
    topk: float
    k: int
    left_out: int        # images that could not be used (missing, unreadable, no class in the path)


def validate(net, dataset, k, line=None) -> ValidResult:
    """Classifies every image of `dataset` (a ClassificationDataset) and
    counts how often its class (the first name its path contains) is the
    most probable one and among the k most probable (k capped at the
    classes). `line(text)` receives darknet's running line after each image.
    Images that are missing, unreadable or name no class are recorded in
    dataset.summary (a warning each) and left out."""
    k = max(1, min(int(k), dataset.classes))
    hits1 = hitsk = n = left_out = 0
    for i in range(len(dataset)):
        found, issues = dataset.classes_of(i)
        img = None
        if found:
            img, more = dataset.image(i)
            issues = issues + more
        dataset.summary.record_all(issues)
        if img is None:
            left_out += 1
            continue
        best = [c.class_id for c in net.classify(img, top=k)]
        hits1 += best[0] == found[0]
        hitsk += found[0] in best
        n += 1
        if line is not None:
            line(f"{n - 1}: top 1: {hits1 / n:f}, top {k}: {hitsk / n:f}")
    return ValidResult(n, hits1 / n if n else 0.0, hitsk / n if n else 0.0, k, left_out)


# ----------------------------------------------------------------------------- train

class _ClassifierTask(TrainTask):
    """darknet's classifier train: a [softmax] head, ClassifierLoader, and
    with -topk the top-k accuracy on the valid= list."""

    command = "classifier"

    def __init__(self, topk):
        self.topk = bool(topk)
        self.k = TRAIN_TOPK
        self.chart_metric = f"top{self.k}"
        self.names_path = self.valid_list = self.eval_net = self.valid_ds = None

    def check_data(self, out, df, data):
        self.names, self.names_path = class_names(df)
        _check_classes(df, self.names, self.names_path)
        if self.topk:
            self.k = _top_of(df, TRAIN_TOPK)
            self.chart_metric = f"top{min(self.k, len(self.names))}"
            self.valid_list = df.valid
            if "valid" not in df.options:
                out.note(f"{data} has no 'valid = <image list>' entry; the accuracy is computed on the training "
                         f"list {df.train} (as darknet does)")
            check_readable(self.valid_list, "the validation image list for -topk", f" (valid= in {data})")

    def check_cfg(self, spec, cfg):
        require_classifier(spec, cfg)

    def check_network(self, out, net, df, cfg, data):
        _check_classes(df, self.names, self.names_path, net, cfg)
        if self.topk:
            self.eval_net = Network(net.spec, batch=1, threads=net.threads, names=self.names)
            self.valid_ds = ClassificationDataset.from_list(self.valid_list, self.names, channels=net.channels)

    def make_loader(self, data, net, seed, workers, rows=None, cache_images=None):
        df = load_data_file(data)
        ds = ClassificationDataset.from_list(df.train, self.names, channels=net.channels)
        aug = ClassifierAugment.from_spec(net.spec, ds.classes)
        return ClassifierLoader(ds, aug, net.full_batch, seed=seed, workers=workers, backend=default_backend(workers),
                                rows=rows, cache_images=cache_images)

    def header(self, base, opts, n_train, save_every, last_every):
        return [base, rate_line(opts), str(n_train)]

    def log_line(self, it, loss, avg_loss, rate, seconds, seen, n_train, hours_left):
        return (f"{it}, {seen / n_train:.3f}: {loss:f}, {avg_loss:f} avg, {rate:f} rate, {seconds:f} seconds, "
                f"{seen} images, {hours_left:f} hours left")

    def evaluation_due(self, it, last, max_b, n_train, full_batch, burn_in):
        if not self.topk:
            return False
        return it >= max(last + 2 * n_train // full_batch, burn_in, 100) or it == max_b

    def evaluate(self, net, record, out, summary, save, bar):
        copy_params(net, self.eval_net)
        result = validate(self.eval_net, self.valid_ds, self.k)
        k = result.k
        out.line("")
        out.line(f" accuracy top1 = {result.top1:f} ")
        out.line(f" accuracy top{k} = {result.topk:f} ")
        record["top1"], record[f"top{k}"] = result.top1, result.topk
        summary.accuracies.append((record["iteration"], result.top1, result.topk))
        if bar is not None:
            bar.set_description(f"top-1 {result.top1 * 100:.1f}% top-{k} {result.topk * 100:.1f}%", refresh=False)


def train_classifier(cfg, data, weights=None, *, topk=False, clear=False, backup=None, max_batches=None, seed=0,
                     save_every=None, last_every=None, chart=None, chart_every=10, workers=2, threads=None,
                     log=None, progress=None, stop_after=None, callback=None, gpu=None, watch=None,
                     cache_images=None):
    """Trains the classifier of `cfg` (ending in [softmax]) on the train=
    list of the .data file `data` (classes from the labels= names in the
    image paths, augmented as the cfg's [net] asks), from `weights` when
    given, up to the cfg's max_batches (or `max_batches`), with detector
    train's checkpoints, resume, log and chart (pydarknet.trainer).

    topk: darknet's -topk: the top-1 and top-k accuracy (k: the .data
      file's top=, default 5) on the valid= list every max(2 epochs,
      burn_in, 100) iterations and at the end (records top1, top<k>;
      summary.accuracies).
    gpu: train on this CUDA device, or on one of a list of them (darknet's -gpus; under MPI the ranks of
      a machine take them in turn; None: the CPU).
    The other arguments are pydarknet.trainer.train_network's.

    Raises ClassifierError / TrainError (or the DataFileError, CfgError,
    WeightsError or DataError of the file at fault) before training."""
    max_batches = check_positive(max_batches, "max_batches")
    return train_network(_ClassifierTask(topk), cfg, data, weights, clear=clear, backup=backup,
                         max_batches=max_batches, seed=seed, save_every=save_every, last_every=last_every,
                         chart=chart, chart_every=chart_every, workers=workers, threads=threads, log=log,
                         progress=progress, stop_after=stop_after, callback=callback, gpu=gpu, watch=watch,
                         cache_images=cache_images)


# ----------------------------------------------------------------------------- command line

def add_parser(commands):
    """Adds `classifier train|predict|valid` to the top-level subparsers."""
    classifier = commands.add_parser(
        "classifier", help="image classifiers: train, predict, valid",
        description="Image classification with a .data file, a cfg ending in [softmax] and weights "
                    "(darknet's 'classifier').")
    sub = classifier.add_subparsers(dest="subcommand", metavar="<subcommand>", required=True)

    def files(p, weights_help, weights_optional=False):
        add_model_files(p, "the .data file (classes=, train=, valid=, labels=, top=); the cfg may come first "
                           "instead, the two are told apart by content",
                        cfg_help="the network's .cfg file (ending in [softmax])", weights_help=weights_help,
                        weights_optional=weights_optional)

    def top_flag(p):
        p.add_argument("-t", "-top", "--top", dest="top", type=positive_int, metavar="N",
                       help="how many classes (default: the .data file's top=, else 1; at most classes)")

    train = sub.add_parser(
        "train", help="train a classifier",
        description="Trains the cfg's classifier on the train= list of the .data file; an image's class is "
                    "the first labels= name its path contains. Checkpoints, the .state file, resuming, the "
                    "JSON log and the chart are detector train's.")
    files(train, "initial weights, or <backup>/<cfg-name>_last.weights to resume", weights_optional=True)
    flag(train, "clear", action="store_true",
         help="start counting iterations at 0 from the given weights (ignores a .state file)")
    flag(train, "topk", action="store_true",
         help="compute the top-1 and top-k accuracy (k: the .data file's top=, default 5) on the valid= list "
              "every max(2 epochs, burn_in, 100) iterations and at the end")
    add_training_flags(train, "seed of the batches, augmentation and initial weights (default 0)")
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser(
        "predict", help="the most probable classes of images",
        description="Prints the most probable classes of one image, or of each image whose path is read "
                    "from standard input (one per line) when no image is given. Names come from the .data "
                    "file's names=, else labels=.")
    files(predict, "the .weights file")
    predict.add_argument("image", nargs="?", help="image file; without it paths are read from standard input")
    top_flag(predict)
    add_gpu_flag(predict)
    predict.set_defaults(func=_cmd_predict)

    valid = sub.add_parser(
        "valid", help="top-1 and top-k accuracy on the valid= list",
        description="Classifies every image of the .data file's valid= list (train= when there is none) "
                    "and prints the running top-1 and top-k accuracy after each (darknet's single centre "
                    "crop). Images that are missing or name no class are reported and left out.")
    files(valid, "the .weights file")
    top_flag(valid)
    add_gpu_flag(valid)
    valid.set_defaults(func=_cmd_valid)
    return classifier


add_classifier_parser = add_parser   # its earlier name


def _cmd_train(args) -> int:
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, "classifier train")
    try:
        train_classifier(cfg_path, data_path, args.weights, topk=args.topk, clear=args.clear, backup=args.backup,
                         max_batches=args.max_batches, seed=args.seed, workers=args.workers, gpu=args.gpus,
                         watch=training_watch(args), cache_images=cache_budget(args))
    except KeyboardInterrupt:
        return 130  # _last was saved and the way to resume printed
    except TRAIN_ERRORS as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _open(args, command, name_keys):
    """(data file, names, names path, network) for predict and valid."""
    data_path, cfg_path = order_data_cfg(args.data, args.cfg, f"classifier {command}")
    df = load_data_file(data_path)
    try:
        names, names_path = class_names(df, name_keys)
        _check_classes(df, names, names_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # noted once, when the network is built
            require_classifier(parse_cfg(cfg_path), cfg_path)
        net = load_network(cfg_path, args.weights, names, args.gpu)
        _check_classes(df, names, names_path, net, cfg_path)
    except ClassifierError as e:
        raise CliError(str(e)) from None
    return df, names, net


def _top(args, df, classes):
    try:
        top = args.top if args.top is not None else _top_of(df, DEFAULT_TOP)
    except ClassifierError as e:
        raise CliError(str(e)) from None
    return min(top, classes)


def _predict_image(net, path, top):
    image = read_image(path, net.channels)
    start = time.perf_counter()
    result = net.classify(image, top=top)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    print(f"{path}: Predicted in {elapsed_ms:f} milli-seconds.")
    for c in result:
        print(f"{c.probability * 100:5.2f}%: {c.name if c.name is not None else c.class_id}")
    sys.stdout.flush()


def _cmd_predict(args) -> int:
    if args.image is not None:
        read_image(args.image)  # fail before the network is built
    df, names, net = _open(args, "predict", ("names", "labels"))
    top = _top(args, df, len(names))
    if args.image is not None:
        _predict_image(net, args.image, top)
        return EXIT_OK
    failed = 0
    for path in stdin_paths():
        try:
            _predict_image(net, path, top)
        except CliError as e:
            failed += 1
            note(f"error: {e}")
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_valid(args) -> int:
    df, names, net = _open(args, "valid", ("labels",))
    top = _top(args, df, len(names))
    valid = df.valid
    origin = "valid=" if "valid" in df.options else "train= (there is no valid=)"
    try:
        check_readable(valid, "the validation image list", f" ({origin} in {df.path})")
    except TrainError as e:
        raise CliError(str(e)) from None
    start = time.perf_counter()
    with warnings_as_notes():
        try:
            ds = ClassificationDataset.from_list(valid, names, channels=net.channels)
            missing = ds.summary["missing_image"]   # listed images not found, already left out
            print(" TOP calculation...")
            print("", flush=True)
            result = validate(net, ds, top, line=lambda text: print(text, flush=True))
        except TRAIN_ERRORS as e:
            raise CliError(str(e)) from None
    left_out = result.left_out + missing
    if not result.images:
        raise CliError(f"{valid}: none of the {left_out} images could be used (see the warnings above)")
    left = f"; {left_out} left out" if left_out else ""
    note(f"{result.images} images of {valid} in {time.perf_counter() - start:.1f} seconds: top-1 "
         f"{result.top1 * 100:.2f} %, top-{result.k} {result.topk * 100:.2f} %{left}")
    return EXIT_OK
