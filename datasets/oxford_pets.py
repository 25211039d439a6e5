"""Oxford-IIIT Pets: 37 cat and dog breeds, CoOp split `split_zhou_OxfordPets.json`.

The fallback reads the official `annotations/trainval.txt` (cut 80/20 into train/val) and
`annotations/test.txt`. Classnames are the lower-cased breed part of the file name.
"""
import os

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum, split_trainval
from engine.registry import DATASETS

_OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"


@DATASETS.register("OxfordPets")
class OxfordPets(DatasetBase):
    """Split JSON, or the official trainval/test lists when it is missing."""

    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    downloads = {
        "images": f"{_OXFORD}images.tar.gz, extracted in DATA/oxford_pets/; "
                  "or `python scripts/prepare_data.py oxford_pets --root DATA`",
        "split_zhou_OxfordPets.json": gdown_hint("split_zhou_OxfordPets.json", "oxford_pets"),
        "annotations/trainval.txt": f"{_OXFORD}annotations.tar.gz, extracted in DATA/oxford_pets/",
        "annotations/test.txt": f"{_OXFORD}annotations.tar.gz, extracted in DATA/oxford_pets/",
    }
    fallback_files = ("annotations/trainval.txt", "annotations/test.txt")

    def build_split(self):
        trainval = self.read_annotations("annotations/trainval.txt")
        test = self.read_annotations("annotations/test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, relpath):
        """Lines `<image stem> <class id 1..37> <species> <breed id>`."""
        items = []
        with open(self.require(relpath)) as f:
            for line in f:
                if not line.strip():
                    continue
                stem, class_id, _species, _breed_id = line.split()
                breed = "_".join(stem.split("_")[:-1]).lower()  # "great_pyrenees_12" -> "great_pyrenees"
                items.append(Datum(os.path.join(self.image_root, f"{stem}.jpg"), int(class_id) - 1, classname=breed))
        return items
