"""Shared test fixtures: a tiny OpenAI-format CLIP and synthetic dataset roots."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import datasets  # noqa: E402,F401  (registers the datasets: train.py imports them only inside main)
import trainers  # noqa: E402,F401  (registers the trainers)
from tests.helpers.tiny_clip import make_tiny_clip  # noqa: E402

# Options that make any trainer config run on the tiny CLIP on a CPU in seconds.
TINY_OPTS = [
    "INPUT.SIZE", "(32, 32)",
    "DATALOADER.NUM_WORKERS", "0",
    "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
    "DATALOADER.TEST.BATCH_SIZE", "8",
    "TRAIN.PRINT_FREQ", "2",
]


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture(scope="session")
def tiny_opts():
    return list(TINY_OPTS)


def make_data_root(tmp_path_factory, *names, split_json=True):
    from tests.helpers.fixtures import make_dataset

    root = tmp_path_factory.mktemp("data")
    for name in names:
        make_dataset(root, name, split_json=split_json)
    return str(root)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Caltech101 and EuroSAT fixtures (JSON splits), shared by CLI tests."""
    return make_data_root(tmp_path_factory, "Caltech101", "EuroSAT")
