"""ImageNet (ILSVRC-2012): 1000 classes, no split JSON.

Train is `images/train/<wnid>/`, and the 50k val images (re-arranged into `images/val/<wnid>/`)
are both the val and the test set. Classnames come from CLIP's curated `classnames.txt`.
The first run scans both folders and caches the result in `preprocessed.json` (paths relative
to the dataset dir, so the root can move); an official `preprocessed.pkl` is read if present.
"""
import json
import os
from collections import OrderedDict

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum, listdir_nohidden, records_from_official_pickle
from engine.errors import DatasetError, short_reason
from engine.io import atomic_write_json
from engine.registry import DATASETS

_ILSVRC = ("{} from https://image-net.org (ILSVRC-2012, needs an account); put it in DATA/imagenet/ and run "
           "`python scripts/prepare_data.py imagenet --root DATA`, which extracts it into {}")


def read_classnames(path):
    """`classnames.txt` lines `<wnid> <class name words...>` -> ordered {wnid: name}."""
    classnames = OrderedDict()
    with open(path) as f:
        for line in f:
            if line.strip():
                wnid, *words = line.strip().split(" ")
                classnames[wnid] = " ".join(words)
    return classnames


def read_wnid_folders(image_dir, classnames):
    """Records of `<image_dir>/<wnid>/*`; label = index of the wnid in the sorted folder list.

    Files are listed sorted, so few-shot subsets do not depend on the filesystem (the
    reference used listing order; README "Differences").
    """
    # skips ImageNet-A/R's README.txt, and hidden folders (.ipynb_checkpoints) as the variants' reference does
    folders = sorted(f.name for f in os.scandir(image_dir) if f.is_dir() and not f.name.startswith("."))
    if not folders:
        raise DatasetError(f"No class folders in {image_dir}: the images must sit in one sub-folder per wnid. "
                           "(ImageNet's val archive is flat: `python scripts/prepare_data.py imagenet --root DATA` "
                           "re-arranges it.)")
    items = []
    for label, folder in enumerate(folders):
        if folder not in classnames:
            raise DatasetError(f"Class folder {os.path.join(image_dir, folder)} is not listed in classnames.txt")
        for imname in listdir_nohidden(os.path.join(image_dir, folder)):
            items.append(Datum(os.path.join(image_dir, folder, imname), label, classname=classnames[folder]))
    return items


@DATASETS.register("ImageNet")
class ImageNet(DatasetBase):
    """Val = test = the official val set; only train is few-shot sampled."""

    dataset_dir = "imagenet"
    image_dir = "images"
    fewshot_val = False
    cache_file = "preprocessed.json"
    official_cache_file = "preprocessed.pkl"
    downloads = {
        "classnames.txt": gdown_hint("classnames.txt", "imagenet"),
        "images": _ILSVRC.format("ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz",
                                 "images/train/<wnid>/ and images/val/<wnid>/"),
        "images/train": _ILSVRC.format("ILSVRC2012_img_train.tar", "images/train/<wnid>/"),
        "images/val": _ILSVRC.format("ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz (val labels)",
                                     "images/val/<wnid>/"),
    }

    def read_full_splits(self):
        cache = os.path.join(self.dataset_root, self.cache_file)
        official_cache = os.path.join(self.dataset_root, self.official_cache_file)
        if os.path.exists(cache):
            print(f"Loading preprocessed data from {cache}")
            with open(cache) as f:
                data = json.load(f)
            train, test = ([Datum(os.path.join(self.dataset_root, p), y, classname=c) for p, y, c in data[key]]
                           for key in ("train", "test"))
        elif os.path.exists(official_cache):
            print(f"Loading preprocessed data from {official_cache}")
            data = records_from_official_pickle(official_cache, self.dataset_root)
            train, test = data["train"], data["test"]
        else:
            classnames = read_classnames(self.require("classnames.txt"))
            train = read_wnid_folders(self.require("images/train"), classnames)
            test = read_wnid_folders(self.require("images/val"), classnames)
            try:
                atomic_write_json(cache, {"train": self.relative_to_root(train), "test": self.relative_to_root(test)})
                print(f"Saved preprocessed data to {cache}")
            except OSError as err:  # the scan is sorted: the next run finds the same lists again
                print(f"Warning: cannot write the scan cache {cache} ({short_reason(err)}); continuing without it")
        return train, test, test

    def relative_to_root(self, items):
        return [[os.path.relpath(item.impath, self.dataset_root), item.label, item.classname] for item in items]
