"""Stanford Cars: 196 car models, CoOp split `split_zhou_StanfordCars.json`.

Split paths are relative to the dataset dir itself (`cars_train/00001.jpg`,
`cars_test/00001.jpg`): both folders hold files with the same names. The fallback reads the
devkit `.mat` files; classnames put the year (last word of the raw name) first.
"""
import os

from datasets.gdrive import gdown_hint
from engine.dataset import DatasetBase, Datum, split_trainval
from engine.registry import DATASETS

_MIRROR = ("the original ai.stanford.edu links are dead; get {} from a mirror with identical files "
           "(e.g. the Kaggle copy of Stanford Cars)")


@DATASETS.register("StanfordCars")
class StanfordCars(DatasetBase):
    """Split JSON, or the devkit annotations when it is missing."""

    dataset_dir = "stanford_cars"
    image_dir = ""  # split paths include cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    downloads = {
        "cars_train": _MIRROR.format("cars_train.tgz") + ", extracted in DATA/stanford_cars/",
        "cars_test": _MIRROR.format("cars_test.tgz") + ", extracted in DATA/stanford_cars/",
        "split_zhou_StanfordCars.json": gdown_hint("split_zhou_StanfordCars.json", "stanford_cars"),
        "devkit/cars_meta.mat": _MIRROR.format("car_devkit.tgz") + ", extracted in DATA/stanford_cars/",
        "devkit/cars_train_annos.mat": _MIRROR.format("car_devkit.tgz") + ", extracted in DATA/stanford_cars/",
        "cars_test_annos_withlabels.mat": _MIRROR.format("cars_test_annos_withlabels.mat")
                                          + ", saved in DATA/stanford_cars/",
    }
    fallback_files = ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat")

    def build_split(self):
        trainval = self.read_annotations("cars_train", "devkit/cars_train_annos.mat")
        test = self.read_annotations("cars_test", "cars_test_annos_withlabels.mat")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, folder, anno_file):
        from scipy.io import loadmat  # only the fallback needs scipy

        annotations = loadmat(self.require(anno_file))["annotations"][0]
        class_names = loadmat(self.require("devkit/cars_meta.mat"))["class_names"][0]
        image_dir = self.require(folder)
        items = []
        for anno in annotations:
            label = int(anno["class"][0, 0]) - 1
            *words, year = class_names[label][0].split(" ")  # "AM General Hummer SUV 2000"
            classname = " ".join([year, *words])            # "2000 AM General Hummer SUV"
            items.append(Datum(os.path.join(image_dir, anno["fname"][0]), label, classname=classname))
        return items
