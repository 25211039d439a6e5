"""Datasets, few-shot sampling, base/new subsampling, transforms and loaders.

Our lean equivalent of Dassl's `DatasetBase`, `DataManager` and `build_transform`.
Everything that decides which images a run sees follows the official readers (docs/data.md)
exactly (Python `random` for sampling, classic torchvision transforms in Dassl's
order), so a seed gives the same few-shot subset and batches as the official code.
"""
import hashlib
import json
import math
import os
import pickle
import random
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, get_worker_info
from torch.utils.data._utils.worker import _generate_state
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from engine.errors import ConfigError, UserError, short_reason
from engine.io import atomic_write_json
from engine.registry import DATASETS

__all__ = [
    "DATASETS", "Datum", "DatasetError", "DatasetBase", "DataManager", "build_dataset",
    "read_split", "save_split", "split_trainval", "read_and_split_data", "listdir_nohidden",
    "generate_fewshot_dataset", "subsample_classes", "subsample_splits", "build_transform", "read_image",
    "PersistentWorkerLoader",
]


class DatasetError(UserError, RuntimeError):
    """A dataset file or folder is missing or unreadable; the message says how to fix it."""


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


def _datum_unchecked(impath, label, classname):
    item = object.__new__(Datum)
    item.impath, item.label, item.domain, item.classname = impath, int(label), 0, classname
    return item


class _DasslDatumUnpickler(pickle.Unpickler):
    """Reads official Dassl caches (`shot_K-seed_S.pkl`, `preprocessed.pkl`) safely.

    Only plain containers and Dassl's `Datum` are allowed; any other global is refused,
    so a crafted file cannot run code.
    """

    class _OfficialDatum:
        def __setstate__(self, state):
            self.__dict__.update(state if isinstance(state, dict) else state[1])

    _ALLOWED = {("collections", "OrderedDict"): OrderedDict, ("builtins", "list"): list,
                ("builtins", "dict"): dict}

    def find_class(self, module, name):
        if name == "Datum" and module.startswith("dassl."):
            return self._OfficialDatum
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"Refusing to load global {module}.{name} from a dataset cache")


def read_official_pickle(path, dataset_root):
    """Load an official Dassl pickle cache, re-rooting absolute paths onto `dataset_root`.

    Returns the unpickled dict with every Datum converted to ours.
    """
    try:
        with open(path, "rb") as f:
            raw = _DasslDatumUnpickler(f).load()
        if not isinstance(raw, dict):
            raise TypeError(f"a {type(raw).__name__}, not a dict of record lists")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetError(f"Cannot use the cache {path} ({short_reason(err)}): it is not an official Dassl "
                           "cache, or it is damaged. Delete it; the run rebuilds it") from err
    folder = os.path.basename(os.path.normpath(dataset_root))

    def reroot(impath):
        marker = f"/{folder}/"
        if marker in impath:
            return os.path.join(dataset_root, impath.rsplit(marker, 1)[1])
        return impath

    def convert(item):
        d = item.__dict__
        return _datum_unchecked(reroot(d["_impath"]), d["_label"], d["_classname"])

    try:
        return {key: [convert(item) for item in items] for key, items in raw.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"Cannot use the cache {path}: its records are not Dassl's Datum ({short_reason(err)}). "
                           "Delete it; the run rebuilds it") from err


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
            cache = read_official_pickle(stem + ".pkl", self.dataset_root)
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


# ----------------------------------------------------------------------------------
# Transforms (Dassl build_transform, the subset these benchmarks use)
# ----------------------------------------------------------------------------------

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
SUPPORTED_TRANSFORMS = ("random_flip", "random_resized_crop", "normalize", "random_crop", "center_crop",
                        "colorjitter", "randomgrayscale", "gaussian_blur")
DASSL_ONLY_TRANSFORMS = ("instance_norm", "random_translation", "cutout", "imagenet_policy", "cifar10_policy",
                         "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise")


def build_transform(cfg, is_train):
    """Train or test pipeline from `INPUT.*`, steps in Dassl's fixed order.

    Returns None when `INPUT.NO_TRANSFORM` is set (raw PIL images).
    """
    if cfg.INPUT.NO_TRANSFORM:
        return None
    choices = list(cfg.INPUT.TRANSFORMS)
    for name in choices:
        if name in DASSL_ONLY_TRANSFORMS:
            raise ConfigError(f"INPUT.TRANSFORMS '{name}' is a Dassl transform this benchmark does not implement; "
                             f"supported: {', '.join(SUPPORTED_TRANSFORMS)}")
        if name not in SUPPORTED_TRANSFORMS:
            raise ConfigError(f"Unknown INPUT.TRANSFORMS entry '{name}'; supported: {', '.join(SUPPORTED_TRANSFORMS)}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ConfigError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)

    tfm = []
    if is_train:
        if "random_crop" not in choices and "random_resized_crop" not in choices:
            tfm.append(T.Resize(size, interpolation=interp))
        if "random_crop" in choices:
            tfm.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "random_resized_crop" in choices:
            tfm.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
        if "center_crop" in choices:
            tfm.append(T.CenterCrop(size))
        if "random_flip" in choices:
            tfm.append(T.RandomHorizontalFlip())
        if "colorjitter" in choices:
            tfm.append(T.ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                                     saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
        if "randomgrayscale" in choices:
            tfm.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
        if "gaussian_blur" in choices:
            tfm.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    else:
        tfm += [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]
    tfm.append(T.ToTensor())
    if "normalize" in choices:
        tfm.append(normalize)
    return T.Compose(tfm)


class DatasetWrapper(Dataset):
    """Reads and transforms one record; items are dicts as in Dassl (`img`, `label`, ...)."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.data_source = data_source
        self.transform = transform
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        self.to_tensor = T.Compose([T.Resize(tuple(cfg.INPUT.SIZE), interpolation=INTERPOLATION_MODES[
            cfg.INPUT.INTERPOLATION]), T.ToTensor(), T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = img0
        else:
            views = [self.transform(img0) for _ in range(self.k_tfm)]
            output["img"] = views[0] if len(views) == 1 else views
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output


def seed_worker(base_seed, worker_id):
    """Seed Python `random`, torch and NumPy exactly as torch seeds a fresh loader worker."""
    random.seed(base_seed + worker_id)
    torch.manual_seed(base_seed + worker_id)
    np.random.seed(_generate_state(base_seed, worker_id))


class _EpochTaggedBatches:
    """The loader's batches of indices, each sent to a worker with the epoch number and its base seed."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch, self.base_seed = 0, None  # epoch 0: workers are fresh, torch has seeded them

    def __iter__(self):
        epoch, base_seed = self.epoch, self.base_seed
        for indices in self.batch_sampler:
            yield epoch, base_seed, indices

    def __len__(self):
        return len(self.batch_sampler)


class _ReseedingDataset(Dataset):
    """Worker side: at the first batch of a new epoch, re-seed as a fresh worker of that epoch is seeded."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.epoch = 0

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, tagged_indices):
        epoch, base_seed, indices = tagged_indices
        if epoch != self.epoch:
            self.epoch = epoch
            seed_worker(base_seed, get_worker_info().id)
        return [self.dataset[i] for i in indices]


class PersistentWorkerLoader(DataLoader):
    """A DataLoader whose workers live across epochs and see the same random streams as fresh ones.

    Reference behaviour: every pass (`iter()`) starts new workers, seeded with a base seed drawn from
    the main process's global torch generator plus the worker id. Starting workers every epoch is a
    large share of a short few-shot epoch, so here they persist; each `iter()` still draws the base
    seed, in the same place, and each worker re-seeds Python `random`, torch and NumPy with it before
    its first batch of the epoch. Batches go to workers in the same order (round robin from worker 0),
    so a run sees the same batches and augmentations as with per-epoch workers, and the main process
    the same global RNG sequence. (`get_worker_info().seed` keeps the first epoch's value.)
    This leans on torch's DataLoader internals (`_index_sampler`, `_iterator`, the workers' NumPy seed
    `_generate_state`); tests/engine/test_data.py compares it with fresh workers batch by batch.
    """

    def __init__(self, dataset, **kwargs):
        super().__init__(_ReseedingDataset(dataset), persistent_workers=True, **kwargs)
        self._tagged_batches = _EpochTaggedBatches(self.batch_sampler)

    @property
    def _index_sampler(self):
        return self._tagged_batches

    def __iter__(self):
        if self._iterator is not None:  # workers already running: draw the seed a fresh iterator draws
            self._tagged_batches.epoch += 1
            self._tagged_batches.base_seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()
        return super().__iter__()


def build_data_loader(cfg, data_source, batch_size, transform, is_train, use_cuda):
    """Train: RandomSampler, drop_last only if the set fills a batch. Test: sequential.

    With workers, they persist across passes unless `DATALOADER.PERSISTENT_WORKERS` is False.
    """
    if not data_source:
        raise DatasetError("A data split is empty; check DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES")
    sampler_name = cfg.DATALOADER.TRAIN_X.SAMPLER if is_train else cfg.DATALOADER.TEST.SAMPLER
    samplers = {"RandomSampler": RandomSampler, "SequentialSampler": SequentialSampler}
    if sampler_name not in samplers:
        raise ConfigError(f"Unsupported sampler '{sampler_name}'; choose one of {list(samplers)}")
    persistent = cfg.DATALOADER.NUM_WORKERS > 0 and cfg.DATALOADER.PERSISTENT_WORKERS
    return (PersistentWorkerLoader if persistent else DataLoader)(
        DatasetWrapper(cfg, data_source, transform, is_train),
        batch_size=batch_size,
        sampler=samplers[sampler_name](data_source),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=use_cuda,
    )


class DataManager:
    """Builds the dataset and its train_x / val / test loaders (nothing drawn from any RNG)."""

    def __init__(self, cfg, use_cuda=False, split_protocol=subsample_splits):
        self.dataset = build_dataset(cfg, split_protocol)
        self.tfm_train = build_transform(cfg, is_train=True)
        self.tfm_test = build_transform(cfg, is_train=False)
        self.train_loader_x = build_data_loader(
            cfg, self.dataset.train_x, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, self.tfm_train, True, use_cuda)
        self.val_loader = None
        if self.dataset.val:
            self.val_loader = build_data_loader(
                cfg, self.dataset.val, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, False, use_cuda)
        self.test_loader = build_data_loader(
            cfg, self.dataset.test, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, False, use_cuda)
        self.num_classes = self.dataset.num_classes
        self.lab2cname = self.dataset.lab2cname
        self.classnames = self.dataset.classnames
        self.show_summary(cfg)

    def show_summary(self, cfg):
        from tabulate import tabulate

        rows = [["Dataset", cfg.DATASET.NAME], ["# classes", f"{self.num_classes:,}"],
                ["# train_x", f"{len(self.dataset.train_x):,}"]]
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(rows))
