"""Caltech101: 100 object categories, CoOp split `split_zhou_Caltech101.json`.

Labels follow the case-sensitive sort of the folder names, so `Faces`, `Leopards` and
`Motorbikes` come first; four folders are renamed and two are not classes at all.
"""
from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, read_and_split_data
from engine.registry import DATASETS


@DATASETS.register("Caltech101")
class Caltech101(DatasetBase):
    """Split JSON, or a 50/20/30 split of the class folders when it is missing."""

    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    downloads = {
        "101_ObjectCategories": "101_ObjectCategories.tar.gz (inside caltech-101.zip from "
                                "https://data.caltech.edu/records/mzrjq-6wc02), extracted in DATA/caltech-101/; "
                                "or `python scripts/prepare_data.py caltech101 --root DATA`",
        "split_zhou_Caltech101.json": gdown_hint("split_zhou_Caltech101.json", "caltech-101"),
    }
    ignored = ("BACKGROUND_Google", "Faces_easy")
    new_cnames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

    def build_split(self):
        return read_and_split_data(self.require(self.image_dir), ignored=self.ignored, new_cnames=self.new_cnames)
