"""Tiny synthetic copies of the 11 benchmark datasets and the 4 ImageNet variants.

Every dataset is written in its exact on-disk format (docs/data.md), so the
real readers, few-shot sampling, base/new subsampling, transforms and loaders all run offline:

- 32x32 solid-colour RGB JPEGs whose colour is a function of the label (learnable signal);
- 5 classes x 8 images (EuroSAT: all 10 classes); the split JSONs put images 1-4 of each class
  in train, 5-6 in val and 7-8 in test, classes in label order;
- the raw annotation files every fallback reads (Pets/SUN397/UCF101 lists, Cars and Flowers
  `.mat` files, ...) are always written, so deleting a split JSON exercises the fallback;
- edge cases (`EDGE_CASES`): a grayscale JPEG, an RGBA PNG under a `.jpg` name, a 64x64 image.

The whole set (about 560 small files, plus ImageNetV2's 1000 numbered folders) is written in
well under a second.

    python -m tests.helpers.fixtures OUT_ROOT [--datasets Caltech101 EuroSAT ...] [--no-split-json]
"""
import argparse
import io
import json
import os
from functools import lru_cache

import numpy as np
from PIL import Image

# Registry name -> config stem (`configs/datasets/<stem>.yaml`) of the 11 benchmark datasets.
FIXTURE_DATASETS = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
}
# The test-only ImageNet variants (cross-dataset / domain-generalisation targets).
VARIANT_DATASETS = {
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}

IMAGENET_CLASSES = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
                    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark")]
CALTECH_CLASSES = [("Faces", "face"), ("Leopards", "leopard"), ("Motorbikes", "motorbike"),
                   ("accordion", "accordion"), ("airplanes", "airplane")]
CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
PETS_BREEDS = ["Abyssinian", "american_bulldog", "Bengal", "yorkshire_terrier", "great_pyrenees"]
# Raw devkit names (year last) and the JSON classnames (year first).
CARS_CLASSES = [("AM General Hummer SUV 2000", "2000 AM General Hummer SUV"),
                ("Acura RL Sedan 2012", "2012 Acura RL Sedan"),
                ("Acura TL Sedan 2012", "2012 Acura TL Sedan"),
                ("Acura TL Type-S 2007", "2007 Acura TL Type-S"),
                ("Acura TSX Sedan 2012", "2012 Acura TSX Sedan")]
FLOWERS_CLASSES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold"]
FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"]
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F-16A/B", "Tu-134"]
SUN_CLASSES = [("a/abbey", "abbey"), ("a/apartment_building/outdoor", "outdoor apartment_building"),
               ("b/bakery/shop", "shop bakery"), ("c/campus", "campus"), ("d/dam", "dam")]
DTD_CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy"]
EUROSAT_CLASSES = [("AnnualCrop", "Annual Crop Land"), ("Forest", "Forest"),
                   ("HerbaceousVegetation", "Herbaceous Vegetation Land"), ("Highway", "Highway or Road"),
                   ("Industrial", "Industrial Buildings"), ("Pasture", "Pasture Land"),
                   ("PermanentCrop", "Permanent Crop Land"), ("Residential", "Residential Buildings"),
                   ("River", "River"), ("SeaLake", "Sea or Lake")]
UCF_CLASSES = [("ApplyEyeMakeup", "Apply_Eye_Makeup"), ("BlowDryHair", "Blow_Dry_Hair"),
               ("PlayingDaf", "Playing_Daf"), ("Skiing", "Skiing"), ("YoYo", "Yo_Yo")]

# Classnames in label order, as the readers must report them (JSON classnames).
CLASSNAMES = {
    "ImageNet": [name for _, name in IMAGENET_CLASSES],
    "Caltech101": [name for _, name in CALTECH_CLASSES],
    "OxfordPets": [breed.lower() for breed in PETS_BREEDS],
    "StanfordCars": [name for _, name in CARS_CLASSES],
    "OxfordFlowers": FLOWERS_CLASSES,
    "Food101": FOOD_CLASSES,
    "FGVCAircraft": AIRCRAFT_VARIANTS,
    "SUN397": [name for _, name in SUN_CLASSES],
    "DescribableTextures": DTD_CLASSES,
    "EuroSAT": [name for _, name in EUROSAT_CLASSES],
    "UCF101": [name for _, name in UCF_CLASSES],
}

# Odd images, relative to the data root: decoding must still give 3-channel 224x224 tensors.
EDGE_CASES = {
    "grayscale": "caltech-101/101_ObjectCategories/Faces/image_0001.jpg",
    "rgba_png_as_jpg": "oxford_pets/images/Abyssinian_1.jpg",
    "64x64": "eurosat/2750/AnnualCrop/AnnualCrop_1.jpg",
}

IMAGE_SIZE = 32
N_IMAGES = 8  # per class: 1-4 train, 5-6 val, 7-8 test in the split JSONs
IMAGENETV2_FOLDERS = 1000  # the reader loops over 0..999, so every numbered folder must exist


def label_colour(label):
    """The solid RGB colour of every image of class `label`."""
    return (37 * label % 256, (91 * label + 40) % 256, (53 * label + 90) % 256)


@lru_cache(maxsize=None)
def _encoded(label, kind="rgb", size=IMAGE_SIZE):
    """Bytes of one image; cached because most files of a class are identical."""
    img = Image.new("RGB", (size, size), label_colour(label))
    buf = io.BytesIO()
    if kind == "gray":
        img.convert("L").save(buf, format="JPEG")
    elif kind == "rgba_png":
        img.convert("RGBA").save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG")
    return buf.getvalue()


def _write_image(path, label, kind="rgb", size=IMAGE_SIZE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(_encoded(label, kind, size))


def _write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _split_of(index):
    """Split of the 1-based image index within its class in the split JSONs."""
    return "train" if index <= 4 else "val" if index <= 6 else "test"


def _write_split_json(path, entries):
    """`entries`: (index, relpath, label, classname) in label, then index order."""
    split = {"train": [], "val": [], "test": []}
    for index, relpath, label, classname in entries:
        split[_split_of(index)].append([relpath, label, classname])
    with open(path, "w") as f:
        json.dump(split, f, indent=4)


def _make_folder_dataset(root, dataset_dir, image_dir, split_file, classes, filename, split_json):
    """One sub-folder per class under `image_dir` (Caltech101, Food101, DTD, EuroSAT).

    `classes`: (folder, classname) in label order; `filename(folder, index)` names a file.
    """
    base = os.path.join(root, dataset_dir)
    entries = []
    for label, (folder, classname) in enumerate(classes):
        for index in range(1, N_IMAGES + 1):
            relpath = f"{folder}/{filename(folder, index)}"
            _write_image(os.path.join(base, image_dir, relpath), label)
            entries.append((index, relpath, label, classname))
    if split_json:
        _write_split_json(os.path.join(base, split_file), entries)
    return base


# ---- the 11 datasets ----------------------------------------------------------------------

def _make_imagenet(root, split_json):
    base = os.path.join(root, "imagenet")  # no split JSON in either mode
    _write_text(os.path.join(base, "classnames.txt"), [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES])
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(1, 7):
            _write_image(os.path.join(base, "images", "train", wnid, f"{wnid}_{i}.JPEG"), label)
        for i in range(1, 3):
            _write_image(os.path.join(base, "images", "val", wnid, f"ILSVRC2012_val_{2 * label + i:08d}.JPEG"), label)


def _make_caltech101(root, split_json):
    base = _make_folder_dataset(root, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                                CALTECH_CLASSES, lambda folder, i: f"image_{i:04d}.jpg", split_json)
    images = os.path.join(base, "101_ObjectCategories")
    for offset, folder in enumerate(CALTECH_IGNORED):  # must never become classes
        for i in range(1, 7):
            _write_image(os.path.join(images, folder, f"image_{i:04d}.jpg"), len(CALTECH_CLASSES) + offset)
    _write_image(os.path.join(root, EDGE_CASES["grayscale"]), 0, kind="gray")


def _make_oxford_pets(root, split_json):
    base = os.path.join(root, "oxford_pets")
    entries, trainval, test = [], [], []
    for label, breed in enumerate(PETS_BREEDS):
        species = 1 if breed[0].isupper() else 2  # cats are capitalised
        for index in range(1, N_IMAGES + 1):
            stem = f"{breed}_{index}"
            _write_image(os.path.join(base, "images", f"{stem}.jpg"), label)
            entries.append((index, f"{stem}.jpg", label, breed.lower()))
            (trainval if index <= 6 else test).append(f"{stem} {label + 1} {species} {label + 1}")
    _write_text(os.path.join(base, "annotations", "trainval.txt"), trainval)
    _write_text(os.path.join(base, "annotations", "test.txt"), test)
    _write_image(os.path.join(root, EDGE_CASES["rgba_png_as_jpg"]), 0, kind="rgba_png")
    if split_json:
        _write_split_json(os.path.join(base, "split_zhou_OxfordPets.json"), entries)


def _annotations_struct(rows):
    """A 1xN MATLAB struct array with fields `fname` and `class`, like the Cars devkit."""
    annos = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
    for i, (fname, cls) in enumerate(rows):
        annos[0, i]["fname"] = fname
        annos[0, i]["class"] = np.array([[cls]], dtype=np.uint8)
    return annos


def _make_stanford_cars(root, split_json):
    from scipy.io import savemat

    base = os.path.join(root, "stanford_cars")
    entries, train_annos, test_annos = [], [], []
    for label, (_, classname) in enumerate(CARS_CLASSES):
        for index in range(1, N_IMAGES + 1):
            # Running ids per folder: images 1-6 of each class in cars_train, 7-8 in cars_test.
            if index <= 6:
                folder, fname = "cars_train", f"{6 * label + index:05d}.jpg"
                train_annos.append((fname, label + 1))
            else:
                folder, fname = "cars_test", f"{2 * label + index - 6:05d}.jpg"
                test_annos.append((fname, label + 1))
            _write_image(os.path.join(base, folder, fname), label)
            entries.append((index, f"{folder}/{fname}", label, classname))
    class_names = np.empty((1, len(CARS_CLASSES)), dtype=object)
    class_names[0, :] = [raw for raw, _ in CARS_CLASSES]
    os.makedirs(os.path.join(base, "devkit"), exist_ok=True)
    savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": class_names})
    savemat(os.path.join(base, "devkit", "cars_train_annos.mat"), {"annotations": _annotations_struct(train_annos)})
    savemat(os.path.join(base, "cars_test_annos_withlabels.mat"), {"annotations": _annotations_struct(test_annos)})
    if split_json:  # paths relative to the dataset dir itself
        _write_split_json(os.path.join(base, "split_zhou_StanfordCars.json"), entries)


def _make_oxford_flowers(root, split_json):
    from scipy.io import savemat

    base = os.path.join(root, "oxford_flowers")
    entries, labels = [], []
    for label, classname in enumerate(FLOWERS_CLASSES):
        for index in range(1, N_IMAGES + 1):
            fname = f"image_{N_IMAGES * label + index:05d}.jpg"  # running index, classes in label order
            _write_image(os.path.join(base, "jpg", fname), label)
            entries.append((index, fname, label, classname))
            labels.append(label + 1)
    savemat(os.path.join(base, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    with open(os.path.join(base, "cat_to_name.json"), "w") as f:
        json.dump({str(label + 1): name for label, name in enumerate(FLOWERS_CLASSES)}, f)
    if split_json:
        _write_split_json(os.path.join(base, "split_zhou_OxfordFlowers.json"), entries)


def _make_food101(root, split_json):
    classes = [(name, name) for name in FOOD_CLASSES]
    ids = {name: 100000 + 1000 * label for label, name in enumerate(FOOD_CLASSES)}
    _make_folder_dataset(root, "food-101", "images", "split_zhou_Food101.json", classes,
                         lambda folder, i: f"{ids[folder] + i:06d}.jpg", split_json)


def _make_fgvc_aircraft(root, split_json):
    base = os.path.join(root, "fgvc_aircraft")  # official txt lists only, in either mode
    lists = {"train": [], "val": [], "test": []}
    for label, variant in enumerate(AIRCRAFT_VARIANTS):
        for index in range(1, N_IMAGES + 1):
            image_id = f"{1000000 + N_IMAGES * label + index:07d}"
            _write_image(os.path.join(base, "images", f"{image_id}.jpg"), label)
            lists[_split_of(index)].append(f"{image_id} {variant}")
    _write_text(os.path.join(base, "variants.txt"), AIRCRAFT_VARIANTS)
    for split, lines in lists.items():
        _write_text(os.path.join(base, f"images_variant_{split}.txt"), lines)


def _make_sun397(root, split_json):
    base = os.path.join(root, "sun397")
    entries, training, testing = [], [], []
    for label, (class_path, classname) in enumerate(SUN_CLASSES):
        for index in range(1, N_IMAGES + 1):
            relpath = f"{class_path}/sun_c{label}i{index}.jpg"
            _write_image(os.path.join(base, "SUN397", relpath), label)
            entries.append((index, relpath, label, classname))
            (training if index <= 6 else testing).append(f"/{relpath}")
    _write_text(os.path.join(base, "ClassName.txt"), [f"/{class_path}" for class_path, _ in SUN_CLASSES])
    _write_text(os.path.join(base, "Training_01.txt"), training)
    _write_text(os.path.join(base, "Testing_01.txt"), testing)
    if split_json:
        _write_split_json(os.path.join(base, "split_zhou_SUN397.json"), entries)


def _make_dtd(root, split_json):
    _make_folder_dataset(root, "dtd", "images", "split_zhou_DescribableTextures.json",
                         [(name, name) for name in DTD_CLASSES], lambda folder, i: f"{folder}_{i:04d}.jpg", split_json)


def _make_eurosat(root, split_json):
    _make_folder_dataset(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES,
                         lambda folder, i: f"{folder}_{i}.jpg", split_json)
    _write_image(os.path.join(root, EDGE_CASES["64x64"]), 0, size=64)


def _make_ucf101(root, split_json):
    base = os.path.join(root, "ucf101")
    entries, trainlist, testlist = [], [], []
    for label, (action, renamed) in enumerate(UCF_CLASSES):
        for index in range(1, N_IMAGES + 1):
            video = f"v_{action}_g{index:02d}_c01"
            _write_image(os.path.join(base, "UCF-101-midframes", renamed, f"{video}.jpg"), label)
            entries.append((index, f"{renamed}/{video}.jpg", label, renamed))
            if index <= 6:
                trainlist.append(f"{action}/{video}.avi {label + 1}")
            else:
                testlist.append(f"{action}/{video}.avi")
    lists = os.path.join(base, "ucfTrainTestlist")
    _write_text(os.path.join(lists, "classInd.txt"), [f"{label + 1} {action}" for label, (action, _) in
                                                      enumerate(UCF_CLASSES)])
    _write_text(os.path.join(lists, "trainlist01.txt"), trainlist)
    _write_text(os.path.join(lists, "testlist01.txt"), testlist)
    if split_json:
        _write_split_json(os.path.join(base, "split_zhou_UCF101.json"), entries)


# ---- ImageNet variants (test only; each has its own classnames.txt) ---------------------------

def _make_imagenetv2(root, split_json):
    base = os.path.join(root, "imagenetv2")
    # The reader maps folder i to line i of classnames.txt and loops over all 1000 folders, so
    # the file needs 1000 lines (placeholders after the 5 real ones) and every folder must
    # exist. Only folders 0-4 hold images, which keeps the labels contiguous (5 classes).
    lines = [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES]
    lines += [f"n{90000000 + i:08d} class {i}" for i in range(len(lines), IMAGENETV2_FOLDERS)]
    _write_text(os.path.join(base, "classnames.txt"), lines)
    image_dir = os.path.join(base, "imagenetv2-matched-frequency-format-val")
    for label in range(IMAGENETV2_FOLDERS):
        os.makedirs(os.path.join(image_dir, str(label)), exist_ok=True)
    for label in range(len(IMAGENET_CLASSES)):
        for i in range(1, 3):
            _write_image(os.path.join(image_dir, str(label), f"{label:04d}_{i}.jpeg"), label)


def _make_wnid_variant(base, image_dir, readme):
    _write_text(os.path.join(base, "classnames.txt"), [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES])
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for i in range(1, 3):
            _write_image(os.path.join(base, image_dir, wnid, f"{wnid}_{i}.jpg"), label)
    if readme:  # ImageNet-A/R ship a README.txt beside the class folders
        _write_text(os.path.join(base, image_dir, "README.txt"), ["Synthetic fixture."])


def _make_imagenet_sketch(root, split_json):
    _make_wnid_variant(os.path.join(root, "imagenet-sketch"), "images", readme=False)


def _make_imagenet_a(root, split_json):
    _make_wnid_variant(os.path.join(root, "imagenet-adversarial"), "imagenet-a", readme=True)


def _make_imagenet_r(root, split_json):
    _make_wnid_variant(os.path.join(root, "imagenet-rendition"), "imagenet-r", readme=True)


_BUILDERS = {
    "ImageNet": _make_imagenet,
    "Caltech101": _make_caltech101,
    "OxfordPets": _make_oxford_pets,
    "StanfordCars": _make_stanford_cars,
    "OxfordFlowers": _make_oxford_flowers,
    "Food101": _make_food101,
    "FGVCAircraft": _make_fgvc_aircraft,
    "SUN397": _make_sun397,
    "DescribableTextures": _make_dtd,
    "EuroSAT": _make_eurosat,
    "UCF101": _make_ucf101,
    "ImageNetV2": _make_imagenetv2,
    "ImageNetSketch": _make_imagenet_sketch,
    "ImageNetA": _make_imagenet_a,
    "ImageNetR": _make_imagenet_r,
}
_BY_STEM = {stem: name for name, stem in {**FIXTURE_DATASETS, **VARIANT_DATASETS}.items()}


def make_dataset(root, name, *, split_json=True):
    """Write the fixture of one dataset (registry name or config stem) under `root`.

    With `split_json=False` the `split_zhou_*.json` files are left out (fallback mode).
    """
    name = _BY_STEM.get(name, name)
    if name not in _BUILDERS:
        raise KeyError(f"No fixture for dataset '{name}'. Known: {', '.join(_BUILDERS)}")
    _BUILDERS[name](os.fspath(root), split_json)


def make_all(root, *, split_json=True):
    """Write the 11 datasets and the 4 ImageNet variants under `root`."""
    for name in _BUILDERS:
        make_dataset(root, name, split_json=split_json)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write tiny synthetic copies of the benchmark datasets.")
    parser.add_argument("root", help="output data root (used as --root for train.py)")
    parser.add_argument("--datasets", nargs="+", default=list(_BUILDERS), metavar="NAME",
                        help="registry names or config stems (default: all 15)")
    parser.add_argument("--no-split-json", action="store_true", help="leave out the split JSONs (fallback mode)")
    args = parser.parse_args(argv)
    for name in args.datasets:
        make_dataset(args.root, name, split_json=not args.no_split_json)
    print(f"Wrote {len(args.datasets)} dataset fixture(s) to {os.path.abspath(args.root)}")


if __name__ == "__main__":
    main()
