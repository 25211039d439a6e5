"""engine/loader.py: loaders, persistent workers, transforms and decoding.

The expected values were written from the reference's readers (transforms, loaders; docs/data.md).
"""
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import get_cfg_default
from engine.dataset import Datum, read_image
from engine.errors import DatasetError
from engine.loader import DatasetWrapper, build_data_loader, build_transform
from tests.helpers.fixtures import EDGE_CASES, make_dataset

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---- loaders ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_cfg():
    """The transform settings of every CoOp-family trainer config."""
    cfg = get_cfg_default()
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name in ("Caltech101", "OxfordPets", "EuroSAT"):
        make_dataset(root, name)
    return root


@pytest.mark.parametrize("n_items,batches,drop_last", [(10, 1, False), (32, 1, True), (40, 1, True)])
def test_train_loader_drops_the_last_batch_only_when_the_set_fills_one(clip_cfg, image_root, n_items, batches,
                                                                        drop_last):
    image = str(image_root / EDGE_CASES["64x64"])
    items = [Datum(image, 0) for _ in range(n_items)]
    loader = build_data_loader(clip_cfg, items, 32, None, is_train=True, use_cuda=False)
    assert loader.drop_last is drop_last and len(loader) == batches
    test_loader = build_data_loader(clip_cfg, items, 32, None, is_train=False, use_cuda=False)
    assert test_loader.drop_last is False


class AugmentAndDraw:
    """The train transform, one draw from each generator a worker seeds, and the worker's process id."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        draws = torch.tensor([random.random(), np.random.rand(), torch.rand(()).item(), os.getpid()],
                             dtype=torch.float64)
        return self.transform(img), draws


def noise_images(folder, n):
    """`n` textured 16x16 images (crops and flips of a solid colour all look the same), labels 0, 1, 2, 0, ..."""
    items = []
    for i in range(n):
        path = folder / f"noise{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        items.append(Datum(str(path), i % 3))
    return items


def two_epochs(cfg, items, persistent):
    """The batches of two passes over a 2-worker train loader, and the global torch RNG state after them."""
    cfg = cfg.clone()
    cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.PERSISTENT_WORKERS = 2, persistent
    torch.manual_seed(0)
    loader = build_data_loader(cfg, items, 4, AugmentAndDraw(build_transform(cfg, is_train=True)), True, False)
    epochs = [[batch["img"] for batch in loader] for _ in range(2)]  # one iter() per epoch, as the trainer
    return epochs, torch.get_rng_state()


def test_persistent_workers_see_the_augmentations_of_fresh_workers(clip_cfg, tmp_path):
    """Same batches, augmentations, Python/NumPy/torch worker draws and main-process RNG state as workers
    started afresh every epoch; only the worker processes are the same ones in both epochs."""
    cfg = clip_cfg.clone()
    cfg.INPUT.SIZE = (8, 8)
    items = noise_images(tmp_path, 10)
    fresh, fresh_rng = two_epochs(cfg, items, persistent=False)
    kept, kept_rng = two_epochs(cfg, items, persistent=True)

    assert len(fresh[0]) == 2  # 10 images, batch 4, drop_last: batches 0 and 1 on workers 0 and 1
    for fresh_epoch, kept_epoch in zip(fresh, kept):
        for (images, draws), (kept_images, kept_draws) in zip(fresh_epoch, kept_epoch):
            assert torch.equal(images, kept_images) and torch.equal(draws[:, :3], kept_draws[:, :3])
    assert torch.equal(fresh_rng, kept_rng)
    assert not torch.equal(fresh[0][0][0], fresh[1][0][0])  # each epoch has new augmentations

    def worker_pids(epoch):
        return {int(pid) for _, draws in epoch for pid in draws[:, 3]}
    assert worker_pids(kept[0]) == worker_pids(kept[1])
    assert not worker_pids(fresh[0]) & worker_pids(fresh[1])



# ---- transforms and decoding ----------------------------------------------------------

@pytest.mark.parametrize("edge_case", EDGE_CASES)
def test_odd_images_decode_to_three_channels(clip_cfg, image_root, edge_case):
    path = str(image_root / EDGE_CASES[edge_case])
    assert read_image(path).mode == "RGB"
    for is_train in (True, False):
        assert build_transform(clip_cfg, is_train)(read_image(path)).shape == (3, 224, 224)


def test_train_transform_output(clip_cfg, image_root):
    item = Datum(str(image_root / "caltech-101/101_ObjectCategories/Leopards/image_0002.jpg"), 1)
    out = DatasetWrapper(clip_cfg, [item], build_transform(clip_cfg, is_train=True), is_train=True)[0]
    assert out["img"].shape == (3, 224, 224) and out["label"] == 1 and out["impath"] == item.impath
    # A solid colour stays solid under crop, flip and resize: every pixel is the normalised colour.
    colour = torch.tensor(read_image(item.impath).getpixel((16, 16))) / 255
    expected = (colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out["img"], expected[:, None, None].expand(3, 224, 224), atol=1e-3)


def test_test_transform_is_a_centre_crop_of_the_bicubic_short_side_resize(clip_cfg, tmp_path):
    torch.manual_seed(0)
    pixels = (torch.rand(32, 48, 3) * 255).to(torch.uint8).numpy()  # 48 wide, 32 high, no structure
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)

    def normalised(img):
        pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        return (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]

    out = build_transform(clip_cfg, is_train=False)(read_image(str(path)))
    resized = Image.open(path).convert("RGB").resize((336, 224), Image.BICUBIC)  # short side -> 224
    assert torch.allclose(out, normalised(resized.crop((56, 0, 280, 224))), atol=1e-5)
    squashed = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)  # the pre-v0.5 Dassl way
    assert not torch.allclose(out, normalised(squashed), atol=1e-3)


def test_normalisation_constants(clip_cfg):
    normalize = build_transform(clip_cfg, is_train=False).transforms[-1]
    assert list(normalize.mean) == CLIP_MEAN and list(normalize.std) == CLIP_STD
    dassl_default = build_transform(get_cfg_default(), is_train=False)  # no "normalize": no Normalize step
    assert not any(type(t).__name__ == "Normalize" for t in dassl_default.transforms)


def test_corrupt_image_names_the_file(clip_cfg, tmp_path):
    bad = tmp_path / "broken_image.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"Cannot read image .*broken_image\.jpg"):
        read_image(str(bad))
    wrapper = DatasetWrapper(clip_cfg, [Datum(str(bad), 0)], build_transform(clip_cfg, is_train=False))
    with pytest.raises(DatasetError, match="broken_image.jpg"):
        wrapper[0]
