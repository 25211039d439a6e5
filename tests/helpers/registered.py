"""Every registered trainer, built on the tiny CLIP with its own config (tests parametrised over the registry).

A trainer registered later is covered by these tests without edits: its config is its
`scripts/methods.py` entry's, else the first YAML of `configs/trainers/<name>/`. One that needs more
than its config to run on the tiny CLIP (e.g. a teacher checkpoint) adds a function to `EXTRA_SETUP`.
"""
import glob
import os

from engine.config import setup_cfg
from engine.registry import TRAINERS
from engine.trainer import build_trainer, set_random_seed
from scripts.methods import METHODS, dataset_config_file, default_config_file
from tests.helpers.cli import REPO
from tests.helpers.tiny_clip import TINY_CLIP
from train import build_parser
from trainers.dpc import DPCMixin

TINY_LAYERS = min(TINY_CLIP["vision_layers"], TINY_CLIP["transformer_layers"])


def promptkd_teacher_opts(request):
    """PromptKD's teacher: a PromptSRC run on the wider tiny teacher CLIP (tests/conftest.py)."""
    return ["TRAINER.PROMPTKD.TEACHER_NAME", request.getfixturevalue("promptkd_clips")[1],
            "TRAINER.PROMPTKD.TEACHER_CKPT", request.getfixturevalue("promptkd_teacher")]


# name -> function(pytest request) returning extra KEY VALUE options, for trainers (and the DPC
# plug-ins on them) whose paper config alone cannot run here (e.g. one that needs a teacher checkpoint).
EXTRA_SETUP = {"PromptKD": promptkd_teacher_opts, "DPC_PromptKD": promptkd_teacher_opts}


def extra_opts(name, request):
    return list(EXTRA_SETUP[name](request)) if name in EXTRA_SETUP else []


def unique_trainers():
    """Registered names, one per class (aliases dropped), backbones before the DPC plug-ins."""
    seen, names = set(), []
    for name in TRAINERS.names():
        cls = TRAINERS.get(name)
        if cls not in seen:
            seen.add(cls)
            names.append(name)
    return sorted(names, key=lambda n: issubclass(TRAINERS.get(n), DPCMixin))


def is_dpc(name):
    return issubclass(TRAINERS.get(name), DPCMixin)


def backbone_of(cls):
    """The registered trainer a DPC plug-in wraps (`class DPC_X(DPCMixin, X)` -> 'X')."""
    base = next(b for b in cls.__bases__ if b is not DPCMixin)
    return next(n for n in TRAINERS.names() if TRAINERS.get(n) is base)


def config_file(name):
    """The trainer's paper config (scripts/methods.py), else the first YAML of configs/trainers/<name>/."""
    entry = METHODS.get(name)
    if entry and entry.config:
        return default_config_file(name, entry)
    found = sorted(glob.glob(os.path.join(REPO, "configs", "trainers", name, "*.yaml")))
    return found[0] if found else ""


def build(name, data_root, tiny_clip_path, tiny_opts, output_dir, opts=(), *, config=None, dataset="caltech101"):
    """`name` built as train.py builds it: seed 1, 2 shots, 1 epoch, base classes, then `opts`.

    `config`: the method YAML (default `config_file(name)`). Prompt depths are capped at the tiny CLIP's layers.
    """
    config = config_file(name) if config is None else config
    argv = ["--root", data_root, "--seed", "1", "--trainer", name, "--backbone", tiny_clip_path,
            "--dataset-config-file", dataset_config_file(dataset),
            "--output-dir", str(output_dir)]
    if config:
        argv += ["--config-file", config]
    args = build_parser().parse_args([*argv, *tiny_opts, "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1",
                                      "DATASET.SUBSAMPLE_CLASSES", "base", *opts])
    cfg = setup_cfg(args)
    # prompt depths of the paper configs (9, 12) exceed the tiny CLIP's layers
    deep = [(f"TRAINER.{node}.{key}", value) for node, keys in cfg.TRAINER.items() if isinstance(keys, dict)
            for key, value in keys.items() if "DEPTH" in key and isinstance(value, int) and value > TINY_LAYERS]
    if deep:
        cfg.defrost()
        cfg.merge_from_list([item for key, _ in deep for item in (key, TINY_LAYERS - 1)])
        cfg.freeze()
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def stage1_opts(name, stage1_dirs, train_backbone):
    """`TRAINER.DPC.BACKBONE_DIR` of a DPC plug-in's stage 1 ([] for other trainers).

    `stage1_dirs`: backbone name -> a finished run of it on the base classes (normally written by the
    backbone's own test, which runs first); `train_backbone(backbone)` trains one and returns its folder.
    """
    if not is_dpc(name):
        return []
    backbone = backbone_of(TRAINERS.get(name))
    if backbone not in stage1_dirs:
        stage1_dirs[backbone] = train_backbone(backbone)
    return ["TRAINER.DPC.BACKBONE_DIR", stage1_dirs[backbone]]
