"""Where the benchmark scripts find model files and photos: the checkout's own cfg/
(public darknet models, cfg/README.md) and data/ (photos), or the folders given with
--cfg-dir and --image. Imports nothing but the standard library, so that a script can
use it while parsing its arguments, before it sets the thread counts and imports NumPy.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CFG_DIR = os.path.join(REPO, "cfg")
DATA_DIR = os.path.join(REPO, "data")
IMAGE = os.path.join(DATA_DIR, "dog.jpg")


def add_cfg_dir_arg(ap):
    ap.add_argument("--cfg-dir", default=CFG_DIR,
                    help="folder in which a model name given to --cfg is looked up (default: the checkout's cfg/)")


def add_image_arg(ap):
    ap.add_argument("--image", default=IMAGE, help="the input photo (default: the checkout's data/dog.jpg)")


def resolve_cfg(name, cfg_dir=CFG_DIR):
    """A cfg path, or a model name (with or without .cfg) looked up in cfg_dir."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    for cand in (os.path.join(cfg_dir, name), os.path.join(cfg_dir, name + ".cfg")):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise SystemExit("cfg not found: %s (neither a file nor a model in %s)" % (name, cfg_dir))


def shown_path(path):
    """path relative to the checkout when it lies inside it (as results record it), else unchanged."""
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else path


def recorded_command(argv):
    """The command line as results record it: the script's name, then its arguments with paths inside
    the checkout relative to it and other absolute paths as .../<name> (no machine's own folders)."""
    def shown(arg):
        key, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if os.path.isabs(value):
            value = shown_path(value)
            if os.path.isabs(value):
                value = ".../" + os.path.basename(value)
        return key + eq + value
    return " ".join([os.path.basename(argv[0])] + [shown(a) for a in argv[1:]])
