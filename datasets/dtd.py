"""Describable Textures (DTD): 47 texture words, CoOp split `split_zhou_DescribableTextures.json`.

The fallback cuts each class folder 50/20/30; the official splits in `labels/`
are not used.
"""
from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, read_and_split_data
from engine.registry import DATASETS


@DATASETS.register("DescribableTextures")
class DescribableTextures(DatasetBase):
    """Split JSON, or a 50/20/30 split of the class folders when it is missing."""

    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    downloads = {
        "images": "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/, extracted in DATA/ "
                  "(it creates dtd/); or `python scripts/prepare_data.py dtd --root DATA`",
        "split_zhou_DescribableTextures.json": gdown_hint("split_zhou_DescribableTextures.json", "dtd"),
    }

    def build_split(self):
        return read_and_split_data(self.require(self.image_dir))
