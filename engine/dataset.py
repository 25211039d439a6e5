"""The dataset side: records, split files, few-shot sampling, base/new subsampling, `DatasetBase`.

Our lean equivalent of Dassl's `Datum` and `DatasetBase`. Everything that decides which images a
run sees follows the official readers (docs/data.md) exactly (Python `random` for sampling), so a
seed gives the same few-shot subset as the official code. The loaders are in engine/loader.py.
"""
import hashlib
import json
import math
import os
import random
from collections import defaultdict

from PIL import Image, UnidentifiedImageError

from engine.errors import ConfigError, DatasetError, short_reason
from engine.io import atomic_write_json
from engine.official_formats import read_official_pickle
from engine.registry import DATASETS

__all__ = [
    "Datum", "DatasetBase", "build_dataset", "read_split", "save_split", "split_trainval", "read_and_split_data",
    "listdir_nohidden", "generate_fewshot_dataset", "subsample_classes", "subsample_splits", "read_image",
    "records_from_official_pickle",
]


class Datum:
    """One image record: absolute path, label, domain (always 0 here) and class name."""

    __slots__ = ("impath", "label", "domain", "classname")

    def __init__(self, impath, label=0, domain=0, classname=""):
        if not os.path.isfile(impath):
            raise DatasetError(
                f"Image listed in the split does not exist: {impath}\n"
                "Every image named in the train, val and test splits must be on disk. "
                "Re-extract the dataset, or check DATASET.ROOT (--root)."
            )
        self.impath = impath
        self.label = int(label)
        self.domain = int(domain)
        self.classname = classname

    def __repr__(self):
        return f"Datum({self.impath!r}, {self.label}, {self.classname!r})"


def listdir_nohidden(path, sort=True):
    """Non-hidden entries of `path`; sorted so results do not depend on the filesystem."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def read_image(path):
    """Open an image as 3-channel RGB (handles grayscale, CMYK, palette, RGBA, PNG-as-JPG)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(
            f"Cannot read image {path}: {err}\n"
            "The file is corrupt or not an image. Re-download or re-extract this dataset."
        ) from err


# ----------------------------------------------------------------------------------
# Split files (`split_zhou_<Name>.json`) and the fallback split builders
# ----------------------------------------------------------------------------------

def read_split(filepath, path_prefix):
    """Read a CoOp split JSON; paths are joined onto `path_prefix`, labels and names kept."""
    with open(filepath) as f:
        split = json.load(f)

    def convert(items):
        return [Datum(os.path.join(path_prefix, impath), int(label), classname=classname)
                for impath, label, classname in items]

    print(f"Reading split from {filepath}")
    return convert(split["train"]), convert(split["val"]), convert(split["test"])


def save_split(train, val, test, filepath, path_prefix):
    """Write a split JSON with paths relative to `path_prefix` (the reference format)."""
    def convert(items):
        out = []
        for item in items:
            impath = item.impath.replace(path_prefix, "", 1)
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, item.label, item.classname))
        return out

    split = {"train": convert(train), "val": convert(val), "test": convert(test)}
    atomic_write_json(filepath, split, indent=4, separators=(",", ": "))
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """Split an official trainval list 80/20 per class (Pets' helper; global Python RNG)."""
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)  # label -> indices, labels in first-appearance order
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)

    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise DatasetError(f"Class {label} has too few trainval images ({len(idxs)}) to hold out a val image")
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """Scan class folders and cut each class 50/20/30 (DTD's helper; global Python RNG).

    Reference behaviour: Python's round-half-to-even decides the counts. Listings
    are sorted here (the reference used filesystem order; README "Differences").
    """
    categories = [c for c in listdir_nohidden(image_dir) if c not in ignored]
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    def collate(ims, label, classname):
        return [Datum(im, label, classname=classname) for im in ims]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if min(n_train, n_val, n_test) <= 0:
            raise DatasetError(f"Class folder {category_dir} has too few images ({n_total}) for a 50/20/30 split")
        classname = new_cnames.get(category, category) if new_cnames else category
        train.extend(collate(images[:n_train], label, classname))
        val.extend(collate(images[n_train:n_train + n_val], label, classname))
        test.extend(collate(images[n_train + n_val:], label, classname))
    return train, val, test


# ----------------------------------------------------------------------------------
# Few-shot sampling and base/new subsampling
# ----------------------------------------------------------------------------------

def split_dataset_by_label(data_source):
    """Group records by label, labels in first-appearance order, records in list order."""
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    """Sample `num_shots` records per class from each source with the global Python RNG.

    Classes with fewer records keep them all and draw nothing (`repeat=False`).
    """
    if num_shots < 1:
        return data_sources[0] if len(data_sources) == 1 else data_sources
    print(f"Creating a {num_shots}-shot dataset")
    output = []
    for data_source in data_sources:
        dataset = []
        for items in split_dataset_by_label(data_source).values():
            if len(items) >= num_shots:
                sampled = random.sample(items, num_shots)
            else:
                sampled = random.choices(items, k=num_shots) if repeat else items
            dataset.extend(sampled)
        output.append(dataset)
    return output[0] if len(output) == 1 else output


def subsample_classes(*args, subsample="all"):
    """Keep the base (first ceil(n/2) sorted labels) or new half and relabel from 0.

    The label set comes from the first list (the few-shot train list); the same
    selection applies to every list passed.
    """
    if subsample not in ("all", "base", "new"):
        raise ConfigError(f"DATASET.SUBSAMPLE_CLASSES must be all, base or new, got {subsample!r}")
    if subsample == "all":
        return args
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        output.append([
            _relabel(item, relabeler[item.label]) for item in dataset if item.label in relabeler
        ])
    return output


def subsample_splits(cfg, train, val, test):
    """The standard protocol: every split keeps the `DATASET.SUBSAMPLE_CLASSES` half, relabelled.

    A trainer with another protocol (e.g. PromptKD's unlabelled all-class training) passes its own
    function with this signature to `DataManager`; it gets the lists after few-shot sampling.
    """
    return subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)


def _relabel(item, label):
    new = object.__new__(Datum)
    new.impath, new.label, new.domain, new.classname = item.impath, label, item.domain, item.classname
    return new


# ----------------------------------------------------------------------------------
# The dataset base class (and the official Dassl caches it can read)
# ----------------------------------------------------------------------------------

def _datum_unchecked(impath, label, classname):
    item = object.__new__(Datum)
    item.impath, item.label, item.domain, item.classname = impath, int(label), 0, classname
    return item


def records_from_official_pickle(path, dataset_root):
    """An official Dassl pickle cache as our records, {split name: [Datum, ...]}, paths re-rooted onto
    `dataset_root`."""
    return {key: [_datum_unchecked(impath, label, classname) for impath, label, classname in records]
            for key, records in read_official_pickle(path, dataset_root).items()}


class DatasetBase:
    """Shared dataset logic: locate files, read or build splits, few-shot, base/new.

    Subclasses set the class attributes and override `build_split()` (datasets with a
    split JSON) or `read_full_splits()` (ImageNet, FGVCAircraft).
    """

    dataset_dir = ""         # folder under DATASET.ROOT
    image_dir = ""           # split paths are relative to this folder ("" = dataset_dir)
    split_file = None        # split JSON in dataset_dir, or None
    downloads = {}           # file/folder name -> how to get it (used by errors and --verify)
    fallback_files = ()      # raw files only needed to rebuild a missing split JSON
    fewshot_val = True       # False: val is the test set and is never sampled (ImageNet)
    test_only = False        # ImageNet variants: every image is both train_x and test

    def __init__(self, cfg, split_protocol=subsample_splits):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_root = os.path.join(root, self.dataset_dir)
        self.image_root = os.path.join(self.dataset_root, self.image_dir) if self.image_dir else self.dataset_root
        if not os.path.isdir(self.dataset_root):
            raise DatasetError(
                f"Dataset folder not found: {self.dataset_root}\n"
                f"{type(self).__name__} expects it under DATASET.ROOT ({root}). "
                f"Prepare it with `python scripts/prepare_data.py {type(self).__name__} --root {root}` "
                "or download:" + "".join(f"\n  {name}: {how}" for name, how in self.downloads.items())
            )
        self.split_fewshot_dir = os.path.join(self.dataset_root, "split_fewshot")  # made when a cache is written

        train, val, test = self.read_full_splits()
        self.train_full = train  # every class, before few-shot sampling (DPC's picture library)
        if self.test_only:
            train, val = test, []  # test-only: no val set, as in the reference
        else:
            num_shots = cfg.DATASET.NUM_SHOTS
            if num_shots >= 1:
                train, val = self.load_or_sample_fewshot(train, val, num_shots, cfg.SEED)
            if not self.fewshot_val:
                val = test
            train, val, test = split_protocol(cfg, train, val, test)

        self.train_x, self.val, self.test = train, val, test
        self.shots_used = None if self.test_only or cfg.DATASET.NUM_SHOTS < 1 else self._shots_used(
            cfg.DATASET.NUM_SHOTS)
        self.num_classes = max(item.label for item in train) + 1
        self.lab2cname = {item.label: item.classname for item in train}
        self.classnames = [self.lab2cname[label] for label in sorted(self.lab2cname)]

    def _shots_used(self, num_shots):
        """Training images per class actually used; classes short of NUM_SHOTS are named once."""
        counts = {}
        for item in self.train_x:
            counts[item.classname] = counts.get(item.classname, 0) + 1
        short = {name: n for name, n in counts.items() if n < num_shots}
        if short:
            print(f"Warning: DATASET.NUM_SHOTS is {num_shots}, but {len(short)} class(es) have fewer training images "
                  f"and use all they have: {', '.join(f'{name} ({n})' for name, n in short.items())}")
        return {"min": min(counts.values(), default=0), "max": max(counts.values(), default=0),
                "short_classes": short}

    # -- overridable steps ----------------------------------------------------------
    def read_full_splits(self):
        """Return the full (train, val, test) lists of every class."""
        split_path = os.path.join(self.dataset_root, self.split_file)
        if os.path.isfile(split_path):
            if self.image_dir:
                self.require(self.image_dir)  # name the missing image folder, not its first image
            return read_split(split_path, self.image_root)
        try:
            train, val, test = self.build_split()
        except DatasetError as err:
            raise DatasetError(
                f"Split file not found: {split_path}" + self._hint(self.split_file)
                + f"\nRebuilding the split from the raw files failed too:\n{err}"
            ) from err
        try:
            save_split(train, val, test, split_path, self.image_root)
        except OSError as err:
            # A rebuilt split can depend on the seed's random draws: it is written once so that every run shares it.
            raise DatasetError(
                f"Cannot write the rebuilt split {split_path} ({short_reason(err)}): every run must share one split, "
                f"so make {self.dataset_root} writable for this first run, or put the released split file there"
                + self._hint(self.split_file)) from err
        return train, val, test

    def build_split(self):
        """Rebuild the split from the raw files when the split JSON is missing."""
        raise DatasetError(
            f"Split file not found: {os.path.join(self.dataset_root, self.split_file)}"
            + self._hint(self.split_file)
        )

    # -- helpers for subclasses ---------------------------------------------------------
    def require(self, relpath):
        """Absolute path of a required file/folder under the dataset dir, or a clear error."""
        path = os.path.join(self.dataset_root, relpath)
        if not os.path.exists(path):
            raise DatasetError(f"{type(self).__name__}: required file not found: {path}" + self._hint(relpath))
        return path

    def _hint(self, relpath):
        name = os.path.basename(os.path.normpath(relpath)) if relpath else ""
        hint = self.downloads.get(relpath) or self.downloads.get(name)
        return f"\nHow to get it: {hint}" if hint else ""

    # -- few-shot cache ---------------------------------------------------------------
    def load_or_sample_fewshot(self, train, val, num_shots, seed):
        """Read `split_fewshot/shot_K-seed_S.json` (or an official `.pkl`), else sample and save.

        A cache must come from the split it is used with: the JSON records a digest of the
        train (and val) list it was drawn from, and a cache without one (an official `.pkl`, or
        an older JSON) must hold only train (and val) images of the current split.
        """
        stem = os.path.join(self.split_fewshot_dir, f"shot_{num_shots}-seed_{seed}")
        digest = self._split_digest(train, val)
        if os.path.exists(stem + ".json"):
            print(f"Loading preprocessed few-shot data from {stem}.json")
            with open(stem + ".json") as f:
                cache = json.load(f)
            cached_train = [Datum(os.path.join(self.image_root, p), y, classname=c) for p, y, c in cache["train"]]
            cached_val = val
            if self.fewshot_val:
                cached_val = [Datum(os.path.join(self.image_root, p), y, classname=c) for p, y, c in cache["val"]]
            self._check_fewshot_cache(stem + ".json", cache.get("drawn_from_sha256"), digest, cached_train,
                                      cached_val, train, val)
            return cached_train, cached_val
        if os.path.exists(stem + ".pkl"):
            print(f"Loading preprocessed few-shot data from {stem}.pkl")
            cache = records_from_official_pickle(stem + ".pkl", self.dataset_root)
            cached_val = cache.get("val", val) if self.fewshot_val else val
            self._check_fewshot_cache(stem + ".pkl", None, digest, cache["train"], cached_val, train, val)
            return cache["train"], cached_val

        train = generate_fewshot_dataset(train, num_shots=num_shots)
        if self.fewshot_val:
            val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        cache = {"train": self._relative(train)}
        if self.fewshot_val:
            cache["val"] = self._relative(val)
        cache["drawn_from_sha256"] = digest
        print(f"Saving preprocessed few-shot data to {stem}.json")
        try:
            os.makedirs(self.split_fewshot_dir, exist_ok=True)
            atomic_write_json(stem + ".json", cache)
        except OSError as err:
            # The draw depends only on the seed and the split, so every run draws these same shots again.
            print(f"Warning: cannot write the few-shot cache {stem}.json ({short_reason(err)}); continuing without "
                  "it (each run draws the same shots again). Make the dataset folder writable to keep it")
        return train, val

    def _split_digest(self, train, val):
        """SHA-256 of the lists the shots are drawn from (the train list, and the val list if sampled)."""
        lists = [self._relative(train)] + ([self._relative(val)] if self.fewshot_val else [])
        return hashlib.sha256(json.dumps(lists).encode()).hexdigest()

    def _relative(self, items):
        return [[os.path.relpath(item.impath, self.image_root), item.label, item.classname] for item in items]

    def _check_fewshot_cache(self, path, recorded, digest, cached_train, cached_val, train, val):
        fix = (f"Runs that used it saw other images than this split gives. Delete {path} to draw the shots again "
               "from the current split (and rerun the runs that used the old cache)")
        if recorded is not None:
            if recorded != digest:
                raise DatasetError(f"The few-shot cache {path} was drawn from another version of the split "
                                   f"(the split file changed since it was written). {fix}")
            return
        pairs = [(cached_train, train)] + ([(cached_val, val)] if self.fewshot_val else [])
        for cached, full in pairs:
            members = {(item.impath, item.label) for item in full}
            strangers = [item.impath for item in cached if (item.impath, item.label) not in members]
            if strangers:
                raise DatasetError(
                    f"The few-shot cache {path} holds {len(strangers)} image(s) that are not in the current split's "
                    f"{'train' if full is train else 'val'} list with the same label (e.g. {strangers[0]}): it was "
                    f"drawn from another split. {fix}")


def build_dataset(cfg, split_protocol=subsample_splits):
    return DATASETS.get(cfg.DATASET.NAME)(cfg, split_protocol)
