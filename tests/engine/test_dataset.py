"""engine/dataset.py: few-shot conformance vector, base/new subsampling, the folder split helper.

The expected values were produced by the reference code (few-shot sampling) or written from its
readers (subsampling, the folder split; docs/data.md).
"""
import os
import random

import pytest

from engine.dataset import Datum, generate_fewshot_dataset, read_and_split_data, subsample_classes
from tests.helpers.fixtures import make_dataset


# ---- few-shot conformance vector ----------------------------------------------------------

@pytest.fixture(scope="module")
def conformance_sources(tmp_path_factory):
    """train: c0/t9, c2/t0..t4, c0/t0..t4, c1/t0..t4; val: c0/v0..v5, c1/v0..v5, c2/v0..v5."""
    root = tmp_path_factory.mktemp("conformance")

    def record(cls, name):
        path = root / f"c{cls}" / f"{name}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.touch()
        return Datum(str(path), cls)

    train = [record(0, "t9")] + [record(c, f"t{i}") for c in (2, 0, 1) for i in range(5)]
    val = [record(c, f"v{i}") for c in (0, 1, 2) for i in range(6)]
    return root, train, val


def names(root, items):
    return [os.path.relpath(item.impath, root)[:-len(".jpg")] for item in items]


def expand(spec):
    return [name.strip() for name in spec.split(",")]


CONFORMANCE = [
    (1, 1, "c0/t0, c2/t4, c1/t0", "c0/v2, c1/v0, c2/v3"),
    (1, 2, "c0/t0, c0/t3, c2/t0, c2/t2, c1/t0, c1/t3", "c0/v3, c0/v5, c1/v5, c1/v3, c2/v1, c2/v0"),
    (1, 4, "c0/t0, c0/t3, c0/t9, c0/t4, c2/t0, c2/t3, c2/t1, c2/t2, c1/t3, c1/t1, c1/t0, c1/t4",
     "c0/v0, c0/v3, c0/v4, c0/v2, c1/v0, c1/v3, c1/v2, c1/v4, c2/v1, c2/v4, c2/v0, c2/v5"),
    (1, 16, "c0/t9, c0/t0, c0/t1, c0/t2, c0/t3, c0/t4, c2/t0, c2/t1, c2/t2, c2/t3, c2/t4, "
            "c1/t0, c1/t1, c1/t2, c1/t3, c1/t4",  # all 16, grouped 0, 2, 1, original order
     "c0/v1, c0/v4, c0/v0, c0/v5, c1/v0, c1/v3, c1/v4, c1/v1, c2/v5, c2/v3, c2/v1, c2/v0"),
    (2, 2, "c0/t9, c0/t4, c2/t0, c2/t2, c1/t1, c1/t2", "c0/v2, c0/v4, c1/v1, c1/v4, c2/v0, c2/v4"),
    (3, 2, "c0/t0, c0/t3, c2/t4, c2/t1, c1/t2, c1/t3", "c0/v5, c0/v4, c1/v0, c1/v4, c2/v0, c2/v3"),
]


@pytest.mark.parametrize("seed,shots,train_expected,val_expected", CONFORMANCE)
def test_fewshot_conformance_vector(conformance_sources, seed, shots, train_expected, val_expected):
    root, train, val = conformance_sources
    random.seed(seed)
    fewshot_train = generate_fewshot_dataset(train, num_shots=shots)  # train first, then val
    fewshot_val = generate_fewshot_dataset(val, num_shots=min(shots, 4))
    assert names(root, fewshot_train) == expand(train_expected)
    assert names(root, fewshot_val) == expand(val_expected)


def test_subsampling_the_conformance_result(conformance_sources):
    root, train, val = conformance_sources
    random.seed(1)
    fewshot_train = generate_fewshot_dataset(train, num_shots=2)
    base, = subsample_classes(fewshot_train, subsample="base")
    new, = subsample_classes(fewshot_train, subsample="new")
    assert [(n, item.label) for n, item in zip(names(root, base), base)] == \
           [("c0/t0", 0), ("c0/t3", 0), ("c1/t0", 1), ("c1/t3", 1)]
    assert [(n, item.label) for n, item in zip(names(root, new), new)] == [("c2/t0", 0), ("c2/t2", 0)]


def test_fewer_items_than_shots_keeps_the_class_and_draws_nothing(conformance_sources):
    _, train, _ = conformance_sources
    random.seed(7)
    state = random.getstate()
    grouped = train[:1] + train[6:11] + train[1:6] + train[11:]  # labels 0, 2, 1 in first-appearance order
    assert generate_fewshot_dataset(train, num_shots=7) == grouped
    assert random.getstate() == state
    assert generate_fewshot_dataset(train, num_shots=-1) is train


# ---- base/new subsampling -------------------------------------------------------------------

def test_base_new_relabelling_uses_the_first_list_and_applies_to_all(tmp_path):
    image = tmp_path / "x.jpg"
    image.touch()

    def items(labels):
        return [Datum(str(image), label, classname=f"class{label}") for label in labels]

    train, test = items([7, 3, 9, 3, 11, 5]), items([3, 5, 7, 9, 11, 13])  # 13 is not in train
    base_train, base_test = subsample_classes(train, test, subsample="base")
    new_train, new_test = subsample_classes(train, test, subsample="new")
    # labels {3, 5, 7, 9, 11}: base = ceil(5/2) = 3 lowest -> 0..2, new = the rest -> 0..1
    assert [(i.label, i.classname) for i in base_train] == [(2, "class7"), (0, "class3"), (0, "class3"), (1, "class5")]
    assert [i.label for i in base_test] == [0, 1, 2]
    assert [(i.label, i.classname) for i in new_train] == [(0, "class9"), (1, "class11")]
    assert [(i.label, i.classname) for i in new_test] == [(0, "class9"), (1, "class11")]
    assert subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ValueError, match="base or new"):
        subsample_classes(train, subsample="Base")


# ---- fallback split helper --------------------------------------------------------------------------

def test_folder_split_is_50_20_30_with_sorted_listings(tmp_path):
    make_dataset(tmp_path, "DescribableTextures", split_json=False)
    image_dir = tmp_path / "dtd" / "images"
    random.seed(1)
    first = read_and_split_data(str(image_dir))
    random.seed(1)
    second = read_and_split_data(str(image_dir))
    assert [len(split) for split in first] == [20, 10, 10]  # 8 images: round(4.0), round(1.6) -> 4/2/2
    assert [[i.impath for i in split] for split in first] == [[i.impath for i in split] for split in second]
