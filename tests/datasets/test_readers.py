"""Every dataset reader on the synthetic fixtures (docs/data.md).

Counts, label order and classnames in split-JSON mode, the fallback splits (and the JSON they
write back), the ImageNet caches, the test-only variants, and the errors for missing files.
"""
import json
import os
import shutil

import pytest
import yaml

from datasets.gdrive import GDRIVE_IDS
from engine.errors import DatasetError
from engine.registry import DATASETS
from tests.helpers.fixtures import CLASSNAMES, FIXTURE_DATASETS, VARIANT_DATASETS, make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL_DATASETS = {**FIXTURE_DATASETS, **VARIANT_DATASETS}
SETTINGS = [(-1, "all"), (-1, "base"), (-1, "new"), (2, "all"), (2, "base"), (2, "new")]

# What the reference readers give on these fixtures at seed 1: (num_classes, train, val, test).
EXPECTED = {(-1, "all"): (5, 20, 10, 10), (-1, "base"): (3, 12, 6, 6), (-1, "new"): (2, 8, 4, 4),
            (2, "all"): (5, 10, 10, 10), (2, "base"): (3, 6, 6, 6), (2, "new"): (2, 4, 4, 4)}
EXPECTED_IMAGENET = {**EXPECTED, (-1, "all"): (5, 30, 10, 10), (-1, "base"): (3, 18, 6, 6), (-1, "new"): (2, 12, 4, 4)}
EXPECTED_EUROSAT = {(-1, "all"): (10, 40, 20, 20), (-1, "base"): (5, 20, 10, 10), (-1, "new"): (5, 20, 10, 10),
                    (2, "all"): (10, 20, 20, 20), (2, "base"): (5, 10, 10, 10), (2, "new"): (5, 10, 10, 10)}
# The same, rebuilding the split without its JSON, shots -1 / all: (train, val, test).
FALLBACK_SIZES = {"OxfordPets": (25, 5, 10), "StanfordCars": (25, 5, 10), "SUN397": (25, 5, 10),
                  "UCF101": (25, 5, 10), "ImageNet": (30, 10, 10), "EuroSAT": (40, 20, 20)}


def expected_sizes(name, shots, subsample):
    table = {"ImageNet": EXPECTED_IMAGENET, "EuroSAT": EXPECTED_EUROSAT}.get(name, EXPECTED)
    return table[(shots, subsample)]


def selected_classnames(name, subsample):
    names = CLASSNAMES[name]
    m = -(-len(names) // 2)  # ceil: base gets the extra class
    return {"all": names, "base": names[:m], "new": names[m:]}[subsample]


def sizes(dataset):
    return dataset.num_classes, len(dataset.train_x), len(dataset.val), len(dataset.test)


# ---- registry and configs ----------------------------------------------------------------------

def test_every_dataset_config_names_a_registered_reader():
    folder = os.path.join(REPO, "configs", "datasets")
    stems = {f[:-len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml")}
    assert stems == set(ALL_DATASETS.values())
    for name, stem in ALL_DATASETS.items():
        with open(os.path.join(folder, f"{stem}.yaml")) as f:
            assert yaml.safe_load(f) == {"DATASET": {"NAME": name}}
        assert name in DATASETS


@pytest.mark.parametrize("name", ALL_DATASETS)
def test_every_required_file_has_a_download_hint(name):
    cls = DATASETS.get(name)
    if cls.split_file:
        assert GDRIVE_IDS[cls.split_file] in cls.downloads[cls.split_file]
    if cls.image_dir:
        assert cls.image_dir in cls.downloads
    assert set(getattr(cls, "fallback_files", ())) <= set(cls.downloads)


# ---- split-JSON mode ----------------------------------------------------------------------------

@pytest.mark.parametrize("shots,subsample", SETTINGS)
@pytest.mark.parametrize("name", FIXTURE_DATASETS)
def test_sizes_labels_and_classnames(json_root, build, name, shots, subsample):
    dataset = build(json_root, name, shots, subsample)
    assert sizes(dataset) == expected_sizes(name, shots, subsample)
    assert dataset.classnames == selected_classnames(name, subsample)
    assert dataset.lab2cname == dict(enumerate(dataset.classnames))
    for item in dataset.train_x + dataset.val + dataset.test:
        assert item.classname == dataset.classnames[item.label]
        assert os.path.isfile(item.impath)
    if name == "ImageNet":  # no separate val split
        assert [(item.impath, item.label) for item in dataset.val] == \
               [(item.impath, item.label) for item in dataset.test]


@pytest.mark.parametrize("name,subsample,classnames", [
    ("Caltech101", "all", ["face", "leopard", "motorbike", "accordion", "airplane"]),
    ("Caltech101", "base", ["face", "leopard", "motorbike"]),
    ("Caltech101", "new", ["accordion", "airplane"]),
    ("UCF101", "new", ["Skiing", "Yo_Yo"]),
    ("SUN397", "base", ["abbey", "outdoor apartment_building", "shop bakery"]),
    ("StanfordCars", "base", ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"]),
    ("OxfordPets", "base", ["abyssinian", "american_bulldog", "bengal"]),
    ("FGVCAircraft", "new", ["F-16A/B", "Tu-134"]),
    ("EuroSAT", "base", ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                         "Industrial Buildings"]),
])
def test_classnames_of_base_and_new(json_root, build, name, subsample, classnames):
    assert build(json_root, name, subsample=subsample).classnames == classnames


def test_new_classes_are_relabelled_from_zero(json_root, build):
    new = build(json_root, "UCF101", subsample="new")
    assert sorted({item.label for item in new.test}) == [0, 1]
    assert {os.path.basename(os.path.dirname(item.impath)) for item in new.test if item.label == 1} == {"Yo_Yo"}


def test_stanford_cars_paths_are_relative_to_the_dataset_dir(json_root, build):
    dataset = build(json_root, "StanfordCars")
    root = os.path.join(json_root, "stanford_cars")
    assert {os.path.relpath(os.path.dirname(item.impath), root) for item in dataset.train_x} == {"cars_train"}
    assert {os.path.relpath(os.path.dirname(item.impath), root) for item in dataset.test} == {"cars_test"}


@pytest.mark.parametrize("name", FIXTURE_DATASETS)
def test_fewshot_cache_file_appears(json_root, build, name):
    dataset = build(json_root, name, shots=2, subsample="base")
    assert os.path.isfile(os.path.join(dataset.dataset_root, "split_fewshot", "shot_2-seed_1.json"))


def test_train_full_keeps_every_class(json_root, build):
    dataset = build(json_root, "Caltech101", shots=2, subsample="base")
    assert len(dataset.train_full) == 20 and len(dataset.train_x) == 6


# ---- fallback mode --------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURE_DATASETS)
def test_fallback_rebuilds_the_split_and_writes_it_back(fallback_root, build, name):
    dataset = build(fallback_root, name)
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == FALLBACK_SIZES.get(name, (20, 10, 10))
    assert dataset.classnames == CLASSNAMES[name]  # same labels and names as the released JSONs
    for item in dataset.train_x + dataset.val + dataset.test:
        assert item.classname == dataset.classnames[item.label]

    cls = DATASETS.get(name)
    if cls.split_file is None:  # Aircraft (official lists) and ImageNet (scan): nothing to write
        assert not [f for f in os.listdir(dataset.dataset_root) if f.startswith("split_zhou_")]
        return
    with open(os.path.join(dataset.dataset_root, cls.split_file)) as f:
        written = json.load(f)
    for key, items in (("train", dataset.train_x), ("val", dataset.val), ("test", dataset.test)):
        assert written[key] == [[os.path.relpath(item.impath, dataset.image_root), item.label, item.classname]
                                for item in items]
    again = build(fallback_root, name, seed=2)  # now read from the JSON: the seed no longer matters
    assert [item.impath for item in again.train_x] == [item.impath for item in dataset.train_x]


def test_caltech_fallback_ignores_the_two_extra_folders(fallback_root, build):
    dataset = build(fallback_root, "Caltech101")
    folders = {os.path.basename(os.path.dirname(item.impath)) for item in dataset.train_x + dataset.test}
    assert folders == {"Faces", "Leopards", "Motorbikes", "accordion", "airplanes"}


# ---- ImageNet caches and the variants ----------------------------------------------------------

def test_imagenet_scan_is_cached_with_relative_paths(tmp_path, build):
    make_dataset(tmp_path / "a", "ImageNet")
    first = build(tmp_path / "a", "ImageNet")
    with open(tmp_path / "a" / "imagenet" / "preprocessed.json") as f:
        cache = json.load(f)
    assert set(cache) == {"train", "test"}
    assert cache["train"][0] == ["images/train/n01440764/n01440764_1.JPEG", 0, "tench"]

    os.rename(tmp_path / "a", tmp_path / "b")  # a moved root still reads its cache
    os.remove(tmp_path / "b" / "imagenet" / "classnames.txt")  # proves the scan is skipped
    second = build(tmp_path / "b", "ImageNet")
    assert [os.path.relpath(item.impath, tmp_path / "b") for item in second.train_x] == \
           [os.path.relpath(item.impath, tmp_path / "a") for item in first.train_x]


def test_imagenet_reads_an_official_preprocessed_pkl(tmp_path, build, write_official_pickle):
    make_dataset(tmp_path, "ImageNet")
    old_root = "/old/machine/data/imagenet"
    wnid, name = "n01443537", "goldfish"
    rows = [(f"{old_root}/images/train/{wnid}/{wnid}_{i}.JPEG", 1, name) for i in (1, 2)]
    test_rows = [(f"{old_root}/images/val/{wnid}/ILSVRC2012_val_{i:08d}.JPEG", 1, name) for i in (3, 4)]
    write_official_pickle(tmp_path / "imagenet" / "preprocessed.pkl", {"train": rows, "test": test_rows})
    os.remove(tmp_path / "imagenet" / "classnames.txt")  # proves the scan is skipped

    dataset = build(tmp_path, "ImageNet")
    assert [item.impath for item in dataset.train_x] == \
           [str(tmp_path / "imagenet" / "images" / "train" / wnid / f"{wnid}_{i}.JPEG") for i in (1, 2)]
    assert len(dataset.test) == 2 and all(os.path.isfile(item.impath) for item in dataset.test)


def test_imagenet_flat_val_folder_is_a_clear_error(tmp_path, build):
    make_dataset(tmp_path, "ImageNet")
    val = tmp_path / "imagenet" / "images" / "val"
    for folder in os.listdir(val):
        for f in os.listdir(val / folder):
            os.rename(val / folder / f, val / f)
        os.rmdir(val / folder)
    with pytest.raises(DatasetError, match=r"No class folders in .*val.*prepare_data.py imagenet"):
        build(tmp_path, "ImageNet")


def test_imagenetv2_maps_folder_numbers_to_classnames_in_file_order(json_root, build):
    dataset = build(json_root, "ImageNetV2", shots=2, subsample="base")  # test-only: both ignored
    assert sizes(dataset) == (5, 10, 0, 10)  # no val; folders 5-999 exist but are empty in the fixture
    assert dataset.classnames == CLASSNAMES["ImageNet"]
    assert all(os.path.basename(os.path.dirname(item.impath)) == str(item.label) for item in dataset.test)
    assert dataset.train_x is dataset.test


@pytest.mark.parametrize("name", ["ImageNetSketch", "ImageNetA", "ImageNetR"])
def test_variants_skip_hidden_folders_and_write_nothing(tmp_path, build, name):
    """Test-only readers may sit on a read-only mount: no split_fewshot/ is created."""
    make_dataset(tmp_path, name)
    cls = DATASETS.get(name)
    dataset_root = os.path.join(tmp_path, cls.dataset_dir)
    os.makedirs(os.path.join(dataset_root, cls.image_dir, ".ipynb_checkpoints"))
    before = sorted(os.listdir(dataset_root))
    dataset = build(tmp_path, name)
    assert dataset.classnames == CLASSNAMES["ImageNet"]
    assert sorted(os.listdir(dataset_root)) == before


@pytest.mark.parametrize("name", ["ImageNetSketch", "ImageNetA", "ImageNetR"])
def test_wnid_folder_variants_are_test_only(json_root, build, name):
    dataset = build(json_root, name, shots=2, subsample="new")
    assert sizes(dataset) == (5, 10, 0, 10)  # test-only variants have no val set, as in the reference
    assert dataset.classnames == CLASSNAMES["ImageNet"]  # README.txt beside the folders is not a class
    assert dataset.train_x is dataset.test


# ---- errors name the missing path and the fix ----------------------------------------------------

@pytest.mark.parametrize("name", ALL_DATASETS)
def test_missing_dataset_folder(tmp_path, build, name):
    folder = os.path.join(tmp_path, DATASETS.get(name).dataset_dir)
    with pytest.raises(DatasetError, match="Dataset folder not found") as err:
        build(tmp_path, name)
    assert folder in str(err.value) and "prepare_data.py" in str(err.value)
    for how in DATASETS.get(name).downloads.values():  # every download, even with no image folder (cars)
        assert how in str(err.value)


@pytest.mark.parametrize("name", [n for n in ALL_DATASETS if DATASETS.get(n).split_file and DATASETS.get(n).image_dir])
def test_split_without_its_image_folder_names_the_folder(tmp_path, build, name):
    make_dataset(tmp_path, name)
    cls = DATASETS.get(name)
    image_root = os.path.join(tmp_path, cls.dataset_dir, cls.image_dir)
    shutil.rmtree(image_root)
    with pytest.raises(DatasetError, match="required file not found") as err:
        build(tmp_path, name)
    assert image_root in str(err.value) and cls.downloads[cls.image_dir] in str(err.value)


# The raw input each reader needs when its split JSON is missing (or always, without a JSON).
MISSING_INPUT = {
    "ImageNet": "classnames.txt",
    "Caltech101": "101_ObjectCategories",
    "OxfordPets": "annotations/trainval.txt",
    "StanfordCars": "devkit/cars_meta.mat",
    "OxfordFlowers": "cat_to_name.json",
    "Food101": "images",
    "FGVCAircraft": "images_variant_val.txt",
    "SUN397": "Testing_01.txt",
    "DescribableTextures": "images",
    "EuroSAT": "2750",
    "UCF101": "ucfTrainTestlist/classInd.txt",
    "ImageNetV2": "classnames.txt",
    "ImageNetSketch": "images",
    "ImageNetA": "imagenet-a",
    "ImageNetR": "classnames.txt",
}


@pytest.mark.parametrize("name", ALL_DATASETS)
def test_missing_split_or_annotation_file(tmp_path, build, name):
    make_dataset(tmp_path, name, split_json=False)
    cls = DATASETS.get(name)
    missing = os.path.join(tmp_path, cls.dataset_dir, MISSING_INPUT[name])
    (shutil.rmtree if os.path.isdir(missing) else os.remove)(missing)
    with pytest.raises(DatasetError) as err:
        build(tmp_path, name)
    message = str(err.value)
    assert missing in message
    assert cls.downloads[MISSING_INPUT[name]] in message  # where to get it
    if cls.split_file:  # the released split comes first, then the fallback's input
        assert os.path.join(tmp_path, cls.dataset_dir, cls.split_file) in message
        assert f"gdown {GDRIVE_IDS[cls.split_file]}" in message


def test_imagenetv2_needs_every_numbered_folder(tmp_path, build):
    make_dataset(tmp_path, "ImageNetV2")
    missing = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "999"
    shutil.rmtree(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        build(tmp_path, "ImageNetV2")


def test_fixture_cli_writes_the_requested_datasets(tmp_path, capsys):
    from tests.helpers.fixtures import main

    main([str(tmp_path), "--datasets", "caltech101", "UCF101", "--no-split-json"])
    assert sorted(os.listdir(tmp_path)) == ["caltech-101", "ucf101"]
    assert not os.path.exists(tmp_path / "ucf101" / "split_zhou_UCF101.json")
    assert "Wrote 2 dataset fixture(s)" in capsys.readouterr().out
