"""SUN397: 397 scene categories, CoOp split `split_zhou_SUN397.json`.

The fallback reads partition 01 (`ClassName.txt`, `Training_01.txt` cut 80/20, `Testing_01.txt`).
Classnames drop the leading letter and reverse the path: `b/bakery/shop` -> `shop bakery`.
"""
import os

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum, split_trainval
from engine.registry import DATASETS

_PARTITIONS = ("Partitions.zip from https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip, "
               "extracted in DATA/sun397/")


@DATASETS.register("SUN397")
class SUN397(DatasetBase):
    """Split JSON, or partition 01 of the official lists when it is missing."""

    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    downloads = {
        "SUN397": "SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/, extracted in DATA/sun397/; "
                  "or `python scripts/prepare_data.py sun397 --root DATA`",
        "split_zhou_SUN397.json": gdown_hint("split_zhou_SUN397.json", "sun397"),
        "ClassName.txt": _PARTITIONS,
        "Training_01.txt": _PARTITIONS,
        "Testing_01.txt": _PARTITIONS,
    }
    fallback_files = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")

    def build_split(self):
        with open(self.require("ClassName.txt")) as f:
            cname2lab = {line.strip()[1:]: label for label, line in enumerate(f)}  # "/a/abbey" -> "a/abbey"
        trainval = self.read_list("Training_01.txt", cname2lab)
        test = self.read_list("Testing_01.txt", cname2lab)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, list_file, cname2lab):
        image_dir = self.require(self.image_dir)
        items = []
        with open(self.require(list_file)) as f:
            for line in f:
                if not line.strip():
                    continue
                relpath = line.strip()[1:]  # "/a/abbey/sun_x.jpg" -> "a/abbey/sun_x.jpg"
                class_key = os.path.dirname(relpath)
                classname = " ".join(class_key.split("/")[1:][::-1])  # indoor/outdoor words first
                items.append(Datum(os.path.join(image_dir, relpath), cname2lab[class_key], classname=classname))
        return items
