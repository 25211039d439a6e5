"""Download the benchmark datasets and arrange them as the readers expect, or check a data root.

    python scripts/prepare_data.py caltech101 --root DATA          # download + arrange one dataset
    python scripts/prepare_data.py all --root DATA                 # the 11 datasets and 4 ImageNet variants
    python scripts/prepare_data.py all --root DATA --verify        # what is present, missing, and the fix
    python scripts/prepare_data.py imagenet --root DATA --val-labels LOC_val_solution.csv

DATASET is a config stem (`caltech101`), a registry name (`Caltech101`) or `all`. Sources:
torchvision's downloaders (Caltech101, Pets, Flowers, Food101, DTD, Aircraft, SUN397, EuroSAT),
gdown for the CoOp authors' Google Drive files (split JSONs, ImageNet `classnames.txt`, UCF101
mid-frames) and the authors' URLs for ImageNetV2/-A/-R. ImageNet
(needs an image-net.org account), StanfordCars (dead links) and ImageNet-Sketch are fetched by
hand; this script then arranges them (ImageNet: archives put in DATA/imagenet/ are extracted,
and the flat val folder is sorted into wnid folders with the devkit or a `--val-labels` file).
Files only the fallback split builders read (e.g. Flowers `cat_to_name.json`) are not downloaded:
the released splits replace them.
"""
import argparse
import json
import os
import re
import shutil
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import datasets  # noqa: E402,F401  (registers the readers)
from datasets.gdrive import GDRIVE_IDS  # noqa: E402
from engine.registry import DATASETS  # noqa: E402

# torchvision class, and (where its download lands under its root, where the reader wants it
# under the dataset dir) for each piece kept.
TORCHVISION = {
    "Caltech101": ("Caltech101", [("caltech101/101_ObjectCategories", "101_ObjectCategories")]),
    "OxfordPets": ("OxfordIIITPet", [("oxford-iiit-pet/images", "images"),
                                     ("oxford-iiit-pet/annotations", "annotations")]),
    "OxfordFlowers": ("Flowers102", [("flowers-102/jpg", "jpg"), ("flowers-102/imagelabels.mat", "imagelabels.mat")]),
    "Food101": ("Food101", [("food-101/images", "images"), ("food-101/meta", "meta")]),
    "DescribableTextures": ("DTD", [("dtd/dtd/images", "images"), ("dtd/dtd/labels", "labels")]),
    "FGVCAircraft": ("FGVCAircraft", [(f"fgvc-aircraft-2013b/data/{name}", name) for name in (
        "images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")]),
    "SUN397": ("SUN397", [("SUN397", "SUN397")]),
    "EuroSAT": ("EuroSAT", [("eurosat/2750", "2750")]),
}
# Archives extracted straight into the dataset dir.
ARCHIVES = {
    "ImageNetV2": ("https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                   "imagenetv2-matched-frequency.tar.gz"),
    "ImageNetA": "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
    "ImageNetR": "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
}
IMAGENET_TRAIN_TAR = "ILSVRC2012_img_train.tar"
IMAGENET_VAL_TAR = "ILSVRC2012_img_val.tar"
IMAGENET_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
WNID = re.compile(r"^n\d{8}$")


def dataset_names():
    """Config stem -> registry name, read from configs/datasets/*.yaml (the README's names)."""
    folder = os.path.join(REPO, "configs", "datasets")
    names = {}
    for fname in sorted(os.listdir(folder)):
        if fname.endswith(".yaml"):
            with open(os.path.join(folder, fname)) as f:
                names[fname[:-len(".yaml")]] = yaml.safe_load(f)["DATASET"]["NAME"]
    return names


def resolve(requested):
    """Registry names for the command-line names (stems, registry names or `all`)."""
    names = dataset_names()
    if "all" in requested:
        return list(names.values())
    resolved = []
    for name in requested:
        if name in names:
            resolved.append(names[name])
        elif name in names.values():
            resolved.append(name)
        else:
            raise SystemExit(f"Unknown dataset '{name}'. Known: all, {', '.join(names)} (or their registry names)")
    return resolved


# ---- verify ----------------------------------------------------------------------------------------

def verify_dataset(root, name):
    """Check one dataset dir; returns (ready, report lines)."""
    cls = DATASETS.get(name)
    dataset_root = os.path.join(root, cls.dataset_dir)
    if not os.path.isdir(dataset_root):
        lines = [f"  [missing]  {dataset_root}/"]
        lines += [f"             {relpath}: {hint}" for relpath, hint in cls.downloads.items()]
        return False, lines

    has_split = bool(cls.split_file) and os.path.isfile(os.path.join(dataset_root, cls.split_file))
    fallback_files = set(cls.fallback_files)
    ready, lines = True, []
    for relpath, hint in cls.downloads.items():
        present = os.path.exists(os.path.join(dataset_root, relpath))
        if present:
            lines.append(f"  [ok]       {relpath}")
        elif relpath in fallback_files and has_split:
            lines.append(f"  [optional] {relpath} (read only when {cls.split_file} is missing)")
        else:
            ready = False
            lines.append(f"  [missing]  {relpath}\n             fix: {hint}")
    problem = structure_problem(root, name)
    if problem:
        ready = False
        lines.append(f"  [problem]  {problem}")
    if cls.split_file and not has_split and ready:
        lines.append(f"  note: the reader will rebuild {cls.split_file} from the raw files; official numbers "
                     "use the released split")
    return ready, lines


def structure_problem(root, name):
    """Layout errors that file-by-file checks miss: unlisted images, a flat val folder, ..."""
    cls = DATASETS.get(name)
    dataset_root = os.path.join(root, cls.dataset_dir)
    image_root = os.path.join(dataset_root, cls.image_dir)
    split_path = os.path.join(dataset_root, cls.split_file) if cls.split_file else None
    if split_path and os.path.isfile(split_path) and os.path.isdir(image_root):
        with open(split_path) as f:
            split = json.load(f)
        listed = [path for key in ("train", "val", "test") for path, _, _ in split[key]]
        missing = [path for path in listed if not os.path.isfile(os.path.join(image_root, path))]
        if missing:
            return (f"{len(missing)} of the {len(listed)} images in {cls.split_file} are not under {image_root} "
                    f"(first: {missing[0]}); re-extract: {cls.downloads.get(cls.image_dir, '')}")
    val_dir = os.path.join(dataset_root, "images", "val")
    if name == "ImageNet" and os.path.isdir(val_dir) and any(f.is_file() for f in os.scandir(val_dir)):
        return (f"{val_dir} holds images directly; sort them into wnid folders with "
                f"`python scripts/prepare_data.py imagenet --root {root}` ({IMAGENET_DEVKIT} in "
                f"{dataset_root}/, or --val-labels FILE)")
    if name == "ImageNetV2" and os.path.isdir(image_root):
        absent = [str(i) for i in range(cls.num_folders) if not os.path.isdir(os.path.join(image_root, str(i)))]
        if absent:
            return (f"{len(absent)} of the folders 0..{cls.num_folders - 1} are missing in {image_root} "
                    f"(e.g. {absent[0]})")
    return None


def verify(root, names):
    """Print what is present, what is missing and the fix, per dataset; True if all are ready."""
    print(f"Data root (DATA in the fixes below): {root}")
    not_ready = []
    for name in names:
        ready, lines = verify_dataset(root, name)
        print(f"{name} ({os.path.join(root, DATASETS.get(name).dataset_dir)}): {'ready' if ready else 'NOT READY'}")
        print("\n".join(lines))
        if not ready:
            not_ready.append(name)
    print(f"\n{len(names) - len(not_ready)}/{len(names)} datasets ready" +
          (f"; not ready: {', '.join(not_ready)}" if not_ready else ""))
    return not not_ready


# ---- arranging (no network) --------------------------------------------------------------------------

def move_into_place(staging, dataset_root, moves):
    """Move torchvision's download layout into the reader's; keeps what is already in place."""
    for src, dst in moves:
        src, dst = os.path.join(staging, src), os.path.join(dataset_root, dst)
        if os.path.exists(dst):
            print(f"Keeping existing {dst}")
        elif not os.path.exists(src):
            raise FileNotFoundError(f"Expected {src} in the download; the archive layout has changed")
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)


def read_val_labels(path):
    """Val image -> wnid, from lines `<image id>[.JPEG] <wnid> ...` (space or comma separated).

    Reads Kaggle's `LOC_val_solution.csv` (header skipped) as well as plain `file wnid` lists.
    """
    labels = {}
    with open(path) as f:
        for line in f:
            tokens = re.split(r"[,\s]+", line.strip())
            if len(tokens) < 2 or not WNID.match(tokens[1]):
                continue  # header or blank line
            image = tokens[0] if "." in tokens[0] else f"{tokens[0]}.JPEG"
            labels[image] = tokens[1]
    return labels


def devkit_val_labels(dataset_root):
    """Val image -> wnid from the official devkit (ground truth is in sorted file order)."""
    from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

    parse_devkit_archive(dataset_root, IMAGENET_DEVKIT)  # writes meta.bin next to it
    val_wnids = load_meta_file(dataset_root)[1]
    images = sorted(f for f in os.listdir(os.path.join(dataset_root, "images", "val")) if f.endswith(".JPEG"))
    return dict(zip(images, val_wnids))


def rearrange_imagenet_val(val_dir, labels):
    """Move the flat val images into `<val_dir>/<wnid>/`; returns how many were moved."""
    flat = sorted(f.name for f in os.scandir(val_dir) if f.is_file() and not f.name.startswith("."))
    unknown = [image for image in flat if image not in labels]
    if unknown:
        raise SystemExit(f"No label for {len(unknown)} val images (e.g. {unknown[0]}); check the label file")
    for image in flat:
        os.makedirs(os.path.join(val_dir, labels[image]), exist_ok=True)
        shutil.move(os.path.join(val_dir, image), os.path.join(val_dir, labels[image], image))
    print(f"Moved {len(flat)} val images into wnid folders under {val_dir}")
    return len(flat)


# ---- downloading -------------------------------------------------------------------------------------

def gdown_file(file_id, dest):
    import gdown

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    print(f"gdown {file_id} -O {dest}")
    if not gdown.download(id=file_id, output=dest, quiet=False):
        raise SystemExit(f"gdown could not fetch {file_id}; download it by hand to {dest}")


def fetch_drive_files(root, cls, staging):
    """The Google Drive files a reader names (split JSON, classnames.txt, ...) that are missing."""
    from torchvision.datasets.utils import extract_archive

    dataset_root = os.path.join(root, cls.dataset_dir)
    fallback_files = set(cls.fallback_files)
    for relpath in cls.downloads:
        dest = os.path.join(dataset_root, relpath)
        if os.path.exists(dest):
            continue
        imagenet_copy = os.path.join(root, "imagenet", relpath)
        if relpath == "classnames.txt" and os.path.isfile(imagenet_copy):  # every variant needs its own copy
            shutil.copy(imagenet_copy, dest)
        elif relpath in GDRIVE_IDS and relpath not in fallback_files:
            gdown_file(GDRIVE_IDS[relpath], dest)
        elif f"{relpath}.zip" in GDRIVE_IDS:  # UCF-101-midframes
            archive = os.path.join(staging, f"{relpath}.zip")
            gdown_file(GDRIVE_IDS[f"{relpath}.zip"], archive)
            extract_archive(archive, dataset_root)


def prepare_imagenet(dataset_root, val_labels):
    """Extract the ILSVRC archives placed in the dataset dir and sort val into wnid folders."""
    from torchvision.datasets.imagenet import parse_train_archive
    from torchvision.datasets.utils import extract_archive

    train_dir, val_dir = os.path.join(dataset_root, "images", "train"), os.path.join(dataset_root, "images", "val")
    if not os.path.isdir(train_dir) and os.path.isfile(os.path.join(dataset_root, IMAGENET_TRAIN_TAR)):
        parse_train_archive(dataset_root, IMAGENET_TRAIN_TAR, folder=os.path.join("images", "train"))
    if not os.path.isdir(val_dir) and os.path.isfile(os.path.join(dataset_root, IMAGENET_VAL_TAR)):
        extract_archive(os.path.join(dataset_root, IMAGENET_VAL_TAR), val_dir)
    if os.path.isdir(val_dir) and any(f.is_file() for f in os.scandir(val_dir)):
        if val_labels:
            labels = read_val_labels(val_labels)
        elif os.path.isfile(os.path.join(dataset_root, IMAGENET_DEVKIT)):
            labels = devkit_val_labels(dataset_root)
        else:
            raise SystemExit(f"{val_dir} is flat: put {IMAGENET_DEVKIT} in {dataset_root}/ or pass --val-labels FILE")
        rearrange_imagenet_val(val_dir, labels)


def prepare(root, name, val_labels=None):
    """Download what can be downloaded for one dataset and arrange it."""
    import torchvision
    from torchvision.datasets.utils import download_and_extract_archive

    cls = DATASETS.get(name)
    dataset_root = os.path.join(root, cls.dataset_dir)
    staging = os.path.join(root, "_downloads", cls.dataset_dir)  # archives; removed once arranged
    os.makedirs(dataset_root, exist_ok=True)
    if name in TORCHVISION:
        tv_class, moves = TORCHVISION[name]
        if not all(os.path.exists(os.path.join(dataset_root, dst)) for _, dst in moves):
            getattr(torchvision.datasets, tv_class)(root=staging, download=True)
            move_into_place(staging, dataset_root, moves)
    elif name in ARCHIVES and not os.path.isdir(os.path.join(dataset_root, cls.image_dir)):
        download_and_extract_archive(ARCHIVES[name], download_root=staging, extract_root=dataset_root)
    elif name == "ImageNet":
        prepare_imagenet(dataset_root, val_labels)
    elif name == "ImageNetSketch" and os.path.isdir(os.path.join(dataset_root, "sketch")):
        os.rename(os.path.join(dataset_root, "sketch"), os.path.join(dataset_root, cls.image_dir))  # zip layout
    fetch_drive_files(root, cls, staging)
    shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="config stem, registry name, or `all`")
    parser.add_argument("--root", required=True, help="data root (DATASET.ROOT / train.py --root)")
    parser.add_argument("--verify", action="store_true", help="only check the root; download nothing")
    parser.add_argument("--val-labels", help="ImageNet: file of `<val image> <wnid>` lines (or LOC_val_solution.csv)")
    args = parser.parse_args(argv)
    root = os.path.abspath(os.path.expanduser(args.root))
    names = resolve(args.datasets)
    if not args.verify:
        for name in names:
            print(f"==> {name}")
            prepare(root, name, args.val_labels)
    return 0 if verify(root, names) else 1


if __name__ == "__main__":
    sys.exit(main())
