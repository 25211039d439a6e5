"""The loader side: transforms, the per-record wrapper, worker seeding, loaders, `DataManager`.

Our lean equivalent of Dassl's `build_transform`, `DatasetWrapper`, `build_data_loader` and
`DataManager`: classic torchvision transforms in Dassl's order and the same samplers and worker
seeding, so a seed gives the same batches and augmentations as the official code. The datasets
themselves are built in engine/dataset.py.
"""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, get_worker_info
from torch.utils.data._utils.worker import _generate_state
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from engine.dataset import build_dataset, read_image, subsample_splits
from engine.errors import ConfigError, DatasetError

__all__ = ["DataManager", "build_transform", "build_data_loader", "DatasetWrapper", "PersistentWorkerLoader"]


# ----------------------------------------------------------------------------------
# Transforms (Dassl build_transform, the subset these benchmarks use)
# ----------------------------------------------------------------------------------

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
SUPPORTED_TRANSFORMS = ("random_flip", "random_resized_crop", "normalize", "random_crop", "center_crop",
                        "colorjitter", "randomgrayscale", "gaussian_blur")
DASSL_ONLY_TRANSFORMS = ("instance_norm", "random_translation", "cutout", "imagenet_policy", "cifar10_policy",
                         "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise")


def build_transform(cfg, is_train):
    """Train or test pipeline from `INPUT.*`, steps in Dassl's fixed order.

    Returns None when `INPUT.NO_TRANSFORM` is set (raw PIL images).
    """
    if cfg.INPUT.NO_TRANSFORM:
        return None
    choices = list(cfg.INPUT.TRANSFORMS)
    for name in choices:
        if name in DASSL_ONLY_TRANSFORMS:
            raise ConfigError(f"INPUT.TRANSFORMS '{name}' is a Dassl transform this benchmark does not implement; "
                             f"supported: {', '.join(SUPPORTED_TRANSFORMS)}")
        if name not in SUPPORTED_TRANSFORMS:
            raise ConfigError(f"Unknown INPUT.TRANSFORMS entry '{name}'; supported: {', '.join(SUPPORTED_TRANSFORMS)}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ConfigError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)

    tfm = []
    if is_train:
        if "random_crop" not in choices and "random_resized_crop" not in choices:
            tfm.append(T.Resize(size, interpolation=interp))
        if "random_crop" in choices:
            tfm.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "random_resized_crop" in choices:
            tfm.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
        if "center_crop" in choices:
            tfm.append(T.CenterCrop(size))
        if "random_flip" in choices:
            tfm.append(T.RandomHorizontalFlip())
        if "colorjitter" in choices:
            tfm.append(T.ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                                     saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
        if "randomgrayscale" in choices:
            tfm.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
        if "gaussian_blur" in choices:
            tfm.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    else:
        tfm += [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]
    tfm.append(T.ToTensor())
    if "normalize" in choices:
        tfm.append(normalize)
    return T.Compose(tfm)


# ----------------------------------------------------------------------------------
# Records to batches: the per-record wrapper, worker seeding, loaders
# ----------------------------------------------------------------------------------

class DatasetWrapper(Dataset):
    """Reads and transforms one record; items are dicts as in Dassl (`img`, `label`, ...)."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.data_source = data_source
        self.transform = transform

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        image = read_image(item.impath)
        output["img"] = image if self.transform is None else self.transform(image)
        return output


def seed_worker(base_seed, worker_id):
    """Seed Python `random`, torch and NumPy exactly as torch seeds a fresh loader worker."""
    random.seed(base_seed + worker_id)
    torch.manual_seed(base_seed + worker_id)
    np.random.seed(_generate_state(base_seed, worker_id))


class _EpochTaggedBatches:
    """The loader's batches of indices, each sent to a worker with the epoch number and its base seed."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch, self.base_seed = 0, None  # epoch 0: workers are fresh, torch has seeded them

    def __iter__(self):
        epoch, base_seed = self.epoch, self.base_seed
        for indices in self.batch_sampler:
            yield epoch, base_seed, indices

    def __len__(self):
        return len(self.batch_sampler)


class _ReseedingDataset(Dataset):
    """Worker side: at the first batch of a new epoch, re-seed as a fresh worker of that epoch is seeded."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.epoch = 0

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, tagged_indices):
        epoch, base_seed, indices = tagged_indices
        if epoch != self.epoch:
            self.epoch = epoch
            seed_worker(base_seed, get_worker_info().id)
        return [self.dataset[i] for i in indices]


class PersistentWorkerLoader(DataLoader):
    """A DataLoader whose workers live across epochs and see the same random streams as fresh ones.

    Reference behaviour: every pass (`iter()`) starts new workers, seeded with a base seed drawn from
    the main process's global torch generator plus the worker id. Starting workers every epoch is a
    large share of a short few-shot epoch, so here they persist; each `iter()` still draws the base
    seed, in the same place, and each worker re-seeds Python `random`, torch and NumPy with it before
    its first batch of the epoch. Batches go to workers in the same order (round robin from worker 0),
    so a run sees the same batches and augmentations as with per-epoch workers, and the main process
    the same global RNG sequence. (`get_worker_info().seed` keeps the first epoch's value.)
    This leans on torch's DataLoader internals (`_index_sampler`, `_iterator`, the workers' NumPy seed
    `_generate_state`); tests/engine/test_loader.py compares it with fresh workers batch by batch.
    """

    def __init__(self, dataset, **kwargs):
        super().__init__(_ReseedingDataset(dataset), persistent_workers=True, **kwargs)
        self._tagged_batches = _EpochTaggedBatches(self.batch_sampler)

    @property
    def _index_sampler(self):
        return self._tagged_batches

    def __iter__(self):
        if self._iterator is not None:  # workers already running: draw the seed a fresh iterator draws
            self._tagged_batches.epoch += 1
            self._tagged_batches.base_seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()
        return super().__iter__()


def build_data_loader(cfg, data_source, batch_size, transform, is_train, use_cuda):
    """Train: RandomSampler, drop_last only if the set fills a batch. Test: sequential.

    With workers, they persist across passes unless `DATALOADER.PERSISTENT_WORKERS` is False.
    """
    if not data_source:
        raise DatasetError("A data split is empty; check DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES")
    sampler_name = cfg.DATALOADER.TRAIN_X.SAMPLER if is_train else cfg.DATALOADER.TEST.SAMPLER
    samplers = {"RandomSampler": RandomSampler, "SequentialSampler": SequentialSampler}
    if sampler_name not in samplers:
        raise ConfigError(f"Unsupported sampler '{sampler_name}'; choose one of {list(samplers)}")
    persistent = cfg.DATALOADER.NUM_WORKERS > 0 and cfg.DATALOADER.PERSISTENT_WORKERS
    return (PersistentWorkerLoader if persistent else DataLoader)(
        DatasetWrapper(cfg, data_source, transform, is_train),
        batch_size=batch_size,
        sampler=samplers[sampler_name](data_source),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=use_cuda,
    )


class DataManager:
    """Builds the dataset and its train_x / val / test loaders (nothing drawn from any RNG)."""

    def __init__(self, cfg, use_cuda=False, split_protocol=subsample_splits):
        self.dataset = build_dataset(cfg, split_protocol)
        self.tfm_train = build_transform(cfg, is_train=True)
        self.tfm_test = build_transform(cfg, is_train=False)
        self.train_loader_x = build_data_loader(
            cfg, self.dataset.train_x, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, self.tfm_train, True, use_cuda)
        self.val_loader = None
        if self.dataset.val:
            self.val_loader = build_data_loader(
                cfg, self.dataset.val, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, False, use_cuda)
        self.test_loader = build_data_loader(
            cfg, self.dataset.test, cfg.DATALOADER.TEST.BATCH_SIZE, self.tfm_test, False, use_cuda)
        self.num_classes = self.dataset.num_classes
        self.lab2cname = self.dataset.lab2cname
        self.classnames = self.dataset.classnames
        self.show_summary(cfg)

    def show_summary(self, cfg):
        from tabulate import tabulate

        rows = [["Dataset", cfg.DATASET.NAME], ["# classes", f"{self.num_classes:,}"],
                ["# train_x", f"{len(self.dataset.train_x):,}"]]
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(rows))
