"""Synthetic data roots for the dataset tests (one in split-JSON mode, one in fallback mode).

Readers write caches into their dataset dirs, so these roots are private temporary copies.
"""
import pickle
import random
import sys
import types

import pytest

import datasets  # noqa: F401  (registers the readers)
from engine.config import get_cfg_default
from engine.registry import DATASETS
from tests.helpers.fixtures import make_all


@pytest.fixture(scope="session")
def json_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_json")
    make_all(root)
    return str(root)


@pytest.fixture(scope="session")
def fallback_root(tmp_path_factory):
    """Every split JSON left out: the readers rebuild (and write) them from the raw files."""
    root = tmp_path_factory.mktemp("data_fallback")
    make_all(root, split_json=False)
    return str(root)


def build_reader(root, name, shots=-1, subsample="all", seed=1):
    """Construct a reader as train.py does: seed the global RNG first, then read."""
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    random.seed(seed)
    return DATASETS.get(name)(cfg)


@pytest.fixture
def build():
    return build_reader


@pytest.fixture
def write_official_pickle(monkeypatch):
    """Write a Dassl-style cache: pickled `dassl.data.datasets.base_dataset.Datum` records.

    Returns `write(path, {"train": [(impath, label, classname), ...], ...})`.
    """
    module_name = "dassl.data.datasets.base_dataset"

    class Datum:  # the attributes Dassl's record pickles
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = module_name, "Datum"
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):  # pickle imports the top-level package first
        monkeypatch.setitem(sys.modules, ".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
    sys.modules[module_name].Datum = Datum

    def write(path, splits):
        with open(path, "wb") as f:
            pickle.dump({key: [Datum(*row) for row in rows] for key, rows in splits.items()}, f)

    return write
