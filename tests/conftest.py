"""Shared test fixtures: a tiny OpenAI-format CLIP, synthetic dataset roots, the example trainer file."""
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


# PromptKD: a student CLIP (embed 512) and a wider teacher CLIP (embed 768), both 32 px, and a teacher
# checkpoint trained by our own trainer on the Caltech101 fixture's base classes.
TEACHER_TRAINER = "PromptSRC"  # as the official teachers: PromptSRC with the ViT-L/14 teacher config
TEACHER_CONFIG = "PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml"


@pytest.fixture(scope="session")
def promptkd_clips(tmp_path_factory):
    """(student path, teacher path)."""
    folder = tmp_path_factory.mktemp("promptkd_clips")
    student = make_tiny_clip(folder / "student.pt", embed_dim=512)
    teacher = make_tiny_clip(folder / "teacher.pt", seed=1, embed_dim=768, vision_width=192, transformer_width=192,
                             transformer_heads=3)
    return student, teacher


@pytest.fixture(scope="session")
def promptkd_teacher(data_root, promptkd_clips, tmp_path_factory):
    """Run directory of a teacher trained with TEACHER_TRAINER (holds VLPromptLearner/model.pth.tar-1)."""
    from tests.helpers.cli import run_train

    out = tmp_path_factory.mktemp("promptkd_teacher")
    run_train(data_root, promptkd_clips[1], list(TINY_OPTS), TEACHER_TRAINER, TEACHER_CONFIG, out,
              opts=["OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", "base"])
    return str(out)


EXAMPLE_TRAINER = os.path.join(REPO, "examples", "my_method.py")  # registers MyMethod (config examples/MyMethod.yaml)


@pytest.fixture
def example_trainer(monkeypatch):
    """The name of the trainer examples/my_method.py registers, loaded as `--trainer-module` loads it, for
    this test only (other tests see the registry without it)."""
    from engine.registry import TRAINERS
    from train import import_trainer_module

    monkeypatch.setattr(TRAINERS, "_entries", dict(TRAINERS._entries))
    monkeypatch.setattr(TRAINERS, "_config_hooks", list(TRAINERS._config_hooks))
    module = os.path.splitext(os.path.basename(EXAMPLE_TRAINER))[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    import_trainer_module(EXAMPLE_TRAINER)
    yield "MyMethod"
    sys.modules.pop(module, None)
