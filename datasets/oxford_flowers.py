"""Oxford Flowers102: 102 flower species, CoOp split `split_zhou_OxfordFlowers.json`.

The fallback reads `imagelabels.mat` (image i has class labels[i-1]) and names classes with
`cat_to_name.json`; each class is cut 50/20/30. The official setid.mat split is not used.
"""
import json
import os
import random
from collections import defaultdict

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum
from engine.errors import DatasetError
from engine.registry import DATASETS

_OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


@DATASETS.register("OxfordFlowers")
class OxfordFlowers(DatasetBase):
    """Split JSON, or a 50/20/30 split of `imagelabels.mat` when it is missing."""

    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    downloads = {
        "jpg": f"{_OXFORD}102flowers.tgz, extracted in DATA/oxford_flowers/; "
               "or `python scripts/prepare_data.py oxford_flowers --root DATA`",
        "split_zhou_OxfordFlowers.json": gdown_hint("split_zhou_OxfordFlowers.json", "oxford_flowers"),
        "imagelabels.mat": f"{_OXFORD}imagelabels.mat, saved in DATA/oxford_flowers/",
        "cat_to_name.json": gdown_hint("cat_to_name.json", "oxford_flowers"),
    }
    fallback_files = ("imagelabels.mat", "cat_to_name.json")

    def build_split(self, p_trn=0.5, p_val=0.2):
        from scipy.io import loadmat  # only the fallback needs scipy

        labels = loadmat(self.require("imagelabels.mat"))["labels"][0]
        with open(self.require("cat_to_name.json")) as f:
            cat_to_name = json.load(f)
        image_dir = self.require(self.image_dir)
        tracker = defaultdict(list)  # category id -> image paths, in first-appearance order
        for i, category in enumerate(labels, start=1):
            tracker[int(category)].append(os.path.join(image_dir, f"image_{i:05d}.jpg"))

        print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {1 - p_trn - p_val:.0%} test")
        train, val, test = [], [], []
        for category, impaths in tracker.items():
            random.shuffle(impaths)
            n_train = round(len(impaths) * p_trn)  # Reference behaviour: round half to even
            n_val = round(len(impaths) * p_val)
            if min(n_train, n_val, len(impaths) - n_train - n_val) <= 0:
                raise DatasetError(f"Flower class {category} has too few images ({len(impaths)}) for a 50/20/30 split")
            classname = cat_to_name[str(category)]
            parts = (impaths[:n_train], impaths[n_train:n_train + n_val], impaths[n_train + n_val:])
            for split, part in zip((train, val, test), parts):
                split.extend(Datum(impath, category - 1, classname=classname) for impath in part)
        return train, val, test
