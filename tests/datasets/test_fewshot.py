"""Few-shot sampling through the readers: the subset, its cache, and the official `.pkl` cache.

Reference behaviour (docs/data.md): the subset is a pure function of (split file, seed, K); sampling
happens before base/new subsampling, and one cache per (K, seed) serves the base and new runs.
"""
import json
import os
import pickle
import random

import pytest

from engine.dataset import generate_fewshot_dataset, read_split
from engine.errors import DatasetError
from tests.helpers.fixtures import make_dataset


def paths(items):
    return [item.impath for item in items]


def test_subset_is_a_function_of_the_split_file_and_seed(tmp_path, build):
    make_dataset(tmp_path, "OxfordFlowers")
    dataset = build(tmp_path, "OxfordFlowers", shots=2, seed=3)

    dataset_root = tmp_path / "oxford_flowers"
    train, val, _ = read_split(dataset_root / "split_zhou_OxfordFlowers.json", str(dataset_root / "jpg"))
    random.seed(3)
    expected_train = generate_fewshot_dataset(train, num_shots=2)  # train first, then val
    expected_val = generate_fewshot_dataset(val, num_shots=2)
    assert paths(dataset.train_x) == paths(expected_train)
    assert paths(dataset.val) == paths(expected_val)
    assert len(dataset.test) == 10  # the test set is never sampled


def test_cache_holds_paths_relative_to_the_image_dir(tmp_path, build):
    make_dataset(tmp_path, "StanfordCars")  # image dir = the dataset dir itself
    dataset = build(tmp_path, "StanfordCars", shots=1)
    with open(tmp_path / "stanford_cars" / "split_fewshot" / "shot_1-seed_1.json") as f:
        cache = json.load(f)
    assert set(cache) == {"train", "val", "drawn_from_sha256"}
    assert cache["train"] == [[os.path.relpath(item.impath, tmp_path / "stanford_cars"), item.label, item.classname]
                              for item in dataset.train_x]
    assert all(path.startswith("cars_train/") for path, _, _ in cache["train"] + cache["val"])


def test_base_and_new_runs_share_one_cache(tmp_path, build):
    make_dataset(tmp_path, "Caltech101")
    cache = tmp_path / "caltech-101" / "split_fewshot" / "shot_2-seed_1.json"
    base = build(tmp_path, "Caltech101", shots=2, subsample="base")
    written = cache.read_text()
    new = build(tmp_path, "Caltech101", shots=2, subsample="new", seed=1)
    everything = build(tmp_path, "Caltech101", shots=2, subsample="all")
    assert cache.read_text() == written
    assert os.listdir(cache.parent) == [cache.name]
    assert paths(everything.train_x) == paths(base.train_x) + paths(new.train_x)
    assert [item.label for item in new.train_x] == [0, 0, 1, 1]


def test_cache_is_read_instead_of_sampling(tmp_path, build):
    make_dataset(tmp_path, "DescribableTextures")
    first = build(tmp_path, "DescribableTextures", shots=2)
    again = build(tmp_path, "DescribableTextures", shots=2)  # seeds the RNG with 1, then reads
    state_after_read = random.getstate()
    random.seed(1)
    assert state_after_read == random.getstate()  # reading the cache draws nothing, so later draws match the reference
    assert paths(again.train_x) == paths(first.train_x)
    other_seed = build(tmp_path, "DescribableTextures", shots=2, seed=2)
    assert paths(other_seed.train_x) != paths(first.train_x)
    assert os.path.isfile(tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_2.json")


def test_more_shots_than_images_keeps_every_image(tmp_path, build):
    make_dataset(tmp_path, "Food101")
    dataset = build(tmp_path, "Food101", shots=16)
    assert (len(dataset.train_x), len(dataset.val)) == (20, 10)


def test_official_fewshot_pickle_is_read_and_rerooted(tmp_path, build, write_official_pickle):
    make_dataset(tmp_path, "EuroSAT")
    old = "/old/machine/data/eurosat/2750"
    train = [(f"{old}/River/River_{i}.jpg", 8, "River") for i in (3, 1)]
    val = [(f"{old}/Forest/Forest_{i}.jpg", 1, "Forest") for i in (5,)]
    os.makedirs(tmp_path / "eurosat" / "split_fewshot")
    write_official_pickle(tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl", {"train": train, "val": val})

    dataset = build(tmp_path, "EuroSAT", shots=2)
    image_dir = tmp_path / "eurosat" / "2750"
    assert paths(dataset.train_x) == [str(image_dir / "River" / f"River_{i}.jpg") for i in (3, 1)]
    assert paths(dataset.val) == [str(image_dir / "Forest" / "Forest_5.jpg")]


def test_imagenet_samples_train_only_and_validates_on_test(tmp_path, build):
    make_dataset(tmp_path, "ImageNet")
    dataset = build(tmp_path, "ImageNet", shots=2, subsample="base")
    with open(tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_1.json") as f:
        assert set(json.load(f)) == {"train", "drawn_from_sha256"}
    assert len(dataset.train_x) == 6
    assert paths(dataset.val) == paths(dataset.test) and len(dataset.test) == 6


# ---- a cache belongs to the split it was drawn from ------------------------------------

def test_cache_from_a_rebuilt_split_is_refused_after_the_official_one_returns(tmp_path, build):
    """The leak: shots drawn from a fallback split, then the official split restored; some cached
    shots are official test images. The cache records its split's digest and is refused."""
    make_dataset(tmp_path, "DescribableTextures")
    split = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    official = split.read_text()
    split.unlink()
    build(tmp_path, "DescribableTextures", shots=2)  # rebuilds a 50/20/30 split, caches shots from it
    split.write_text(official)
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    with pytest.raises(DatasetError, match=rf"{cache} was drawn from another version of the split.*Delete"):
        build(tmp_path, "DescribableTextures", shots=2)
    cache.unlink()
    fresh = build(tmp_path, "DescribableTextures", shots=2)
    official_test = {item.impath for item in fresh.test}
    assert not official_test & set(paths(fresh.train_x))


def test_cache_without_digest_must_hold_train_images(tmp_path, build):
    make_dataset(tmp_path, "Caltech101")
    build(tmp_path, "Caltech101", shots=2)
    cache_path = tmp_path / "caltech-101" / "split_fewshot" / "shot_2-seed_1.json"
    cache = json.loads(cache_path.read_text())
    del cache["drawn_from_sha256"]  # as an older version wrote it: still accepted while it fits
    cache_path.write_text(json.dumps(cache))
    assert len(build(tmp_path, "Caltech101", shots=2).train_x) == 10
    split = json.loads((tmp_path / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    cache["train"][0] = split["test"][0]
    cache_path.write_text(json.dumps(cache))
    with pytest.raises(DatasetError, match=r"holds 1 image\(s\) that are not in the current split's train list"):
        build(tmp_path, "Caltech101", shots=2)


def test_official_pickle_with_a_test_image_is_refused(tmp_path, build, write_official_pickle):
    make_dataset(tmp_path, "EuroSAT")
    split = json.loads((tmp_path / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    old = "/old/machine/data/eurosat/2750"
    rows = {key: [(f"{old}/{p}", y, c) for p, y, c in split[key][:2]] for key in ("train", "val", "test")}
    os.makedirs(tmp_path / "eurosat" / "split_fewshot")
    pickle_path = tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl"
    write_official_pickle(pickle_path, {"train": rows["train"] + rows["test"][:1], "val": rows["val"]})
    with pytest.raises(DatasetError, match="not in the current split's train list"):
        build(tmp_path, "EuroSAT", shots=2)


def test_unwritable_cache_folder_draws_the_same_shots(tmp_path, build, capsys):
    make_dataset(tmp_path, "Caltech101")
    cached = build(tmp_path, "Caltech101", shots=2)
    other = tmp_path / "other"
    make_dataset(other, "Caltech101")
    (other / "caltech-101" / "split_fewshot").write_text("")  # a file where the folder goes: not writable
    uncached = build(other, "Caltech101", shots=2)
    assert "cannot write the few-shot cache" in capsys.readouterr().out
    rel = lambda items, root: [os.path.relpath(p, root) for p in paths(items)]  # noqa: E731
    assert rel(uncached.train_x, other) == rel(cached.train_x, tmp_path)


def test_more_shots_than_images_is_reported_once_with_the_classes(tmp_path, build, capsys):
    make_dataset(tmp_path, "Food101")
    dataset = build(tmp_path, "Food101", shots=16)
    out = capsys.readouterr().out
    assert out.count("Warning: DATASET.NUM_SHOTS is 16") == 1
    assert dataset.shots_used["max"] < 16 and set(dataset.shots_used["short_classes"]) == set(dataset.classnames)
    assert build(tmp_path, "Food101", shots=1).shots_used == {"min": 1, "max": 1, "short_classes": {}}


def test_unwritable_dataset_folder_for_a_rebuilt_split_is_a_clear_error(tmp_path, build):
    make_dataset(tmp_path, "DescribableTextures", split_json=False)
    os.makedirs(tmp_path / "dtd" / "split_zhou_DescribableTextures.json")  # a folder where the file goes
    with pytest.raises(DatasetError, match=r"Cannot write the rebuilt split .*make .*dtd writable"):
        build(tmp_path, "DescribableTextures", shots=2)


def test_dataset_cache_pickle_that_would_run_code_is_refused(tmp_path, build):
    from tests.helpers.crafted import RunsCommand

    make_dataset(tmp_path, "EuroSAT")
    os.makedirs(tmp_path / "eurosat" / "split_fewshot")
    target = tmp_path / "touched"
    (tmp_path / "eurosat" / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(
        pickle.dumps({"train": [RunsCommand(f"touch {target}")]}))
    with pytest.raises(DatasetError, match=r"Cannot use the cache .*shot_2-seed_1.pkl .*Refusing to load global"):
        build(tmp_path, "EuroSAT", shots=2)
    assert not target.exists()
