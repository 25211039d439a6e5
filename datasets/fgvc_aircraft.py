"""FGVC-Aircraft 2013b: 100 aircraft variants, official variant-level splits.

No split JSON: the official `images_variant_{train,val,test}.txt` and `variants.txt` are read
on every run. Variant names may hold spaces and `/` (`Cessna 172`, `F-16A/B`). The copyright
banner at the bottom of the images is kept, as in the reference.
"""
import os

from engine.dataset import DatasetBase, Datum
from engine.errors import DatasetError
from engine.registry import DATASETS

_ARCHIVE = ("fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/; its data/ folder "
            "becomes DATA/fgvc_aircraft/; or `python scripts/prepare_data.py fgvc_aircraft --root DATA`")


@DATASETS.register("FGVCAircraft")
class FGVCAircraft(DatasetBase):
    """Label = line index in `variants.txt`; lists hold `<image id> <variant name>`."""

    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    downloads = {name: _ARCHIVE for name in ("images", "variants.txt", "images_variant_train.txt",
                                             "images_variant_val.txt", "images_variant_test.txt")}

    def read_full_splits(self):
        with open(self.require("variants.txt")) as f:
            cname2lab = {line.strip(): label for label, line in enumerate(f)}
        image_dir = self.require(self.image_dir)
        return tuple(self.read_list(f"images_variant_{split}.txt", cname2lab, image_dir)
                     for split in ("train", "val", "test"))

    def read_list(self, list_file, cname2lab, image_dir):
        path = self.require(list_file)
        items = []
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                image_id, *words = line.split()
                classname = " ".join(words)
                if classname not in cname2lab:
                    raise DatasetError(f"{path}: variant '{classname}' of image {image_id} is not in variants.txt")
                items.append(Datum(os.path.join(image_dir, f"{image_id}.jpg"), cname2lab[classname],
                                   classname=classname))
        return items
