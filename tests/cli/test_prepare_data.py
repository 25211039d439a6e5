"""scripts/prepare_data.py without network: `--verify`, and the re-arranging steps on fake layouts."""
import os

import pytest

from datasets.gdrive import GDRIVE_IDS
from scripts.prepare_data import (TORCHVISION, main, move_into_place, read_val_labels, rearrange_imagenet_val,
                                  resolve)
from tests.helpers.fixtures import FIXTURE_DATASETS, VARIANT_DATASETS, make_all, make_dataset


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_full")
    make_all(root)
    return str(root)


def test_names_resolve_from_stems_registry_names_and_all():
    assert resolve(["caltech101", "DescribableTextures"]) == ["Caltech101", "DescribableTextures"]
    assert sorted(resolve(["all"])) == sorted({**FIXTURE_DATASETS, **VARIANT_DATASETS})
    with pytest.raises(SystemExit, match="Unknown dataset 'caltech'"):
        resolve(["caltech"])


def test_verify_on_a_full_root_says_everything_is_present(full_root, capsys):
    assert main(["all", "--root", full_root, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "15/15 datasets ready" in out
    assert "[missing]" not in out and "[problem]" not in out
    assert "Caltech101 (" in out and "[ok]       split_zhou_Caltech101.json" in out


def test_verify_names_a_deleted_split_file_and_its_gdown_command(tmp_path, capsys):
    make_dataset(tmp_path, "Food101")
    os.remove(tmp_path / "food-101" / "split_zhou_Food101.json")
    assert main(["food101", "--root", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "[missing]  split_zhou_Food101.json" in out
    assert f"gdown {GDRIVE_IDS['split_zhou_Food101.json']} -O DATA/food-101/split_zhou_Food101.json" in out
    assert "not ready: Food101" in out


def test_verify_marks_fallback_inputs_optional_only_while_the_split_exists(tmp_path, capsys):
    make_dataset(tmp_path, "OxfordPets")
    os.remove(tmp_path / "oxford_pets" / "annotations" / "test.txt")
    assert main(["oxford_pets", "--root", str(tmp_path), "--verify"]) == 0
    assert "[optional] annotations/test.txt" in capsys.readouterr().out

    os.remove(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")
    assert main(["OxfordPets", "--root", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "[missing]  annotations/test.txt" in out and "annotations.tar.gz" in out


def test_verify_reports_a_missing_dataset_and_missing_split_images(tmp_path, capsys):
    make_dataset(tmp_path, "EuroSAT")
    os.remove(tmp_path / "eurosat" / "2750" / "River" / "River_8.jpg")
    assert main(["eurosat", "ucf101", "--root", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "1 of the 80 images in split_zhou_EuroSAT.json are not under" in out and "River/River_8.jpg" in out
    assert f"[missing]  {tmp_path / 'ucf101'}/" in out and GDRIVE_IDS["UCF-101-midframes.zip"] in out


def flatten_imagenet_val(root):
    """The raw ILSVRC val layout: every image directly in images/val; returns {image: wnid}."""
    val = os.path.join(root, "imagenet", "images", "val")
    labels = {}
    for wnid in os.listdir(val):
        for image in os.listdir(os.path.join(val, wnid)):
            os.rename(os.path.join(val, wnid, image), os.path.join(val, image))
            labels[image] = wnid
        os.rmdir(os.path.join(val, wnid))
    return val, labels


def test_imagenet_val_is_rearranged_into_wnid_folders(tmp_path, capsys):
    make_dataset(tmp_path, "ImageNet")
    val, labels = flatten_imagenet_val(tmp_path)
    assert main(["imagenet", "--root", str(tmp_path), "--verify"]) == 1
    assert "holds images directly" in capsys.readouterr().out

    # Kaggle's LOC_val_solution.csv layout: header, then `<id>,<wnid> <box> ...`.
    label_file = tmp_path / "LOC_val_solution.csv"
    label_file.write_text("ImageId,PredictionString\n" + "".join(
        f"{image[:-len('.JPEG')]},{wnid} 1 2 3 4\n" for image, wnid in sorted(labels.items())))
    assert read_val_labels(label_file) == labels
    assert main(["imagenet", "--root", str(tmp_path), "--val-labels", str(label_file)]) == 0  # nothing to download
    for image, wnid in labels.items():
        assert os.path.isfile(os.path.join(val, wnid, image))
    assert "1/1 datasets ready" in capsys.readouterr().out


def test_imagenet_val_rearrangement_refuses_unlabelled_images(tmp_path):
    make_dataset(tmp_path, "ImageNet")
    val, labels = flatten_imagenet_val(tmp_path)
    labels.pop(sorted(labels)[0])
    with pytest.raises(SystemExit, match="No label for 1 val images"):
        rearrange_imagenet_val(val, labels)


def test_torchvision_layouts_move_into_the_reader_layout(tmp_path):
    staging, dataset_root = tmp_path / "staging", tmp_path / "fgvc_aircraft"
    _, moves = TORCHVISION["FGVCAircraft"]
    for src, _ in moves:  # what torchvision's FGVCAircraft download leaves behind
        path = staging / src
        if src.endswith(".txt"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        else:
            path.mkdir(parents=True)
    move_into_place(str(staging), str(dataset_root), moves)
    assert sorted(os.listdir(dataset_root)) == sorted(dst for _, dst in moves)
    move_into_place(str(staging), str(dataset_root), moves)  # a second run keeps what is in place
