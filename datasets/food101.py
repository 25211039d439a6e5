"""Food-101: 101 dishes, CoOp split `split_zhou_Food101.json`.

The fallback cuts each class folder 50/20/30; the official meta/train/test lists are not used,
so the benchmark test set is not the official one.
"""
from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, read_and_split_data
from engine.registry import DATASETS


@DATASETS.register("Food101")
class Food101(DatasetBase):
    """Split JSON, or a 50/20/30 split of the class folders when it is missing."""

    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    downloads = {
        "images": "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/, "
                  "extracted in DATA/ (it creates food-101/); or `python scripts/prepare_data.py food101 --root DATA`",
        "split_zhou_Food101.json": gdown_hint("split_zhou_Food101.json", "food-101"),
    }

    def build_split(self):
        return read_and_split_data(self.require(self.image_dir))
