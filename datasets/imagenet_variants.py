"""ImageNet variants for cross-dataset / domain-generalisation tests (docs/data.md).

ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R are test-only: every image is both
`train_x` and `test`, with no few-shot step and no base/new subsampling. Each dataset dir
holds its own copy of ImageNet's `classnames.txt`.
"""
import os

from datasets.gdrive import gdown_hint
from datasets.imagenet import read_classnames, read_wnid_folders
from engine.dataset import DatasetBase, Datum, listdir_nohidden
from engine.errors import DatasetError
from engine.registry import DATASETS


@DATASETS.register("ImageNetV2")
class ImageNetV2(DatasetBase):
    """Matched-frequency test set: folder `<i>` holds class i (line i of classnames.txt)."""

    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    test_only = True
    num_folders = 1000  # Reference behaviour: hard-coded, so every numbered folder must exist
    downloads = {
        "classnames.txt": gdown_hint("classnames.txt", "imagenetv2"),
        "imagenetv2-matched-frequency-format-val":
            "imagenetv2-matched-frequency.tar.gz from https://huggingface.co/datasets/vaishaal/ImageNetV2 "
            "(see https://github.com/modestyachts/ImageNetV2), extracted in DATA/imagenetv2/; "
            "or `python scripts/prepare_data.py imagenetv2 --root DATA`",
    }

    def read_full_splits(self):
        path = self.require("classnames.txt")
        classnames = list(read_classnames(path).values())  # file order, not sorted
        if len(classnames) < self.num_folders:
            raise DatasetError(f"{path} has {len(classnames)} classes; ImageNetV2 needs ImageNet's full list of "
                               f"{self.num_folders}" + self._hint("classnames.txt"))
        self.require(self.image_dir)
        items = []
        for label in range(self.num_folders):
            folder = self.require(f"{self.image_dir}/{label}")
            items += [Datum(os.path.join(folder, imname), label, classname=classnames[label])
                      for imname in listdir_nohidden(folder)]
        return items, items, items


class _WnidFolderVariant(DatasetBase):
    """Label = index in the sorted wnid folders of `image_dir`; classname from classnames.txt."""

    test_only = True

    def read_full_splits(self):
        classnames = read_classnames(self.require("classnames.txt"))
        items = read_wnid_folders(self.require(self.image_dir), classnames)
        return items, items, items


@DATASETS.register("ImageNetSketch")
class ImageNetSketch(_WnidFolderVariant):
    """50k sketches of the 1000 ImageNet classes."""

    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    downloads = {
        "classnames.txt": gdown_hint("classnames.txt", "imagenet-sketch"),
        "images": "ImageNet-Sketch.zip from https://github.com/HaohanWang/ImageNet-Sketch (Google Drive, Kaggle or "
                  "Hugging Face), extracted in DATA/imagenet-sketch/; then `python scripts/prepare_data.py "
                  "imagenet_sketch --root DATA` renames its sketch/ folder to images/",
    }


@DATASETS.register("ImageNetA")
class ImageNetA(_WnidFolderVariant):
    """Natural adversarial examples; 200 classes, labelled 0..199 (not ImageNet indices)."""

    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    downloads = {
        "classnames.txt": gdown_hint("classnames.txt", "imagenet-adversarial"),
        "imagenet-a": "imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples, extracted in "
                      "DATA/imagenet-adversarial/; or `python scripts/prepare_data.py imagenet_a --root DATA`",
    }


@DATASETS.register("ImageNetR")
class ImageNetR(_WnidFolderVariant):
    """Renditions (art, cartoons, ...); 200 classes, labelled 0..199."""

    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    downloads = {
        "classnames.txt": gdown_hint("classnames.txt", "imagenet-rendition"),
        "imagenet-r": "imagenet-r.tar from https://github.com/hendrycks/imagenet-r, extracted in "
                      "DATA/imagenet-rendition/; or `python scripts/prepare_data.py imagenet_r --root DATA`",
    }
