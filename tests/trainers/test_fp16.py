"""Every registered trainer trains and evaluates in real fp16 (the path GPU users run).

On a CPU, PREC fp16 normally falls back to fp32; the test-only switch `TRAIN_TEST_CPU_FP16=1`
keeps it. The trainers are taken from the registry, so a trainer added later is covered too:
if it needs more than its paper config to run on the tiny CLIP, add it to `EXTRA_SETUP`.
"""
import math
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config import setup_cfg
from engine.precision import TEST_CPU_FP16_ENV
from engine.registry import TRAINERS
from engine.trainer import build_trainer, set_random_seed
from scripts.methods import METHODS, default_config_file
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


def unique_trainers():
    """Registered names, one per class (aliases dropped), backbones before the DPC plug-ins."""
    seen, names = set(), []
    for name in TRAINERS.names():
        cls = TRAINERS.get(name)
        if cls not in seen:
            seen.add(cls)
            names.append(name)
    return sorted(names, key=lambda n: issubclass(TRAINERS.get(n), DPCMixin))


def backbone_of(cls):
    """The registered trainer a DPC plug-in wraps (`class DPC_X(DPCMixin, X)` -> 'X')."""
    base = next(b for b in cls.__bases__ if b is not DPCMixin)
    return next(n for n in TRAINERS.names() if TRAINERS.get(n) is base)


def config_file(name):
    entry = METHODS.get(name)
    return default_config_file(name, entry) if entry and entry.config else ""


def build(name, data_root, tiny_clip_path, tiny_opts, output_dir, opts=()):
    argv = ["--root", data_root, "--seed", "1", "--trainer", name, "--backbone", tiny_clip_path,
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "caltech101.yaml"),
            "--output-dir", str(output_dir)]
    if config_file(name):
        argv += ["--config-file", config_file(name)]
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


@pytest.fixture(scope="module")
def fp16_on_cpu():
    previous = os.environ.get(TEST_CPU_FP16_ENV)
    os.environ[TEST_CPU_FP16_ENV] = "1"
    yield
    if previous is None:
        del os.environ[TEST_CPU_FP16_ENV]
    else:
        os.environ[TEST_CPU_FP16_ENV] = previous


@pytest.fixture(scope="module")
def stage1_dirs():
    return {}


@pytest.mark.parametrize("name", unique_trainers())
def test_trainer_trains_and_evaluates_in_fp16(name, fp16_on_cpu, stage1_dirs, data_root, tiny_clip_path, tiny_opts,
                                              tmp_path, request):
    cls = TRAINERS.get(name)
    opts = list(EXTRA_SETUP[name](request)) if name in EXTRA_SETUP else []
    if issubclass(cls, DPCMixin):
        backbone = backbone_of(cls)
        if backbone not in stage1_dirs:  # normally trained by its own test, which runs first
            build(backbone, data_root, tiny_clip_path, tiny_opts, tmp_path / backbone, opts).train()
            stage1_dirs[backbone] = str(tmp_path / backbone)
        opts += ["TRAINER.DPC.BACKBONE_DIR", stage1_dirs[backbone]]
    trainer = build(name, data_root, tiny_clip_path, tiny_opts, tmp_path / name, opts)
    assert trainer.precision.name == "fp16"
    clip_weight = trainer.model.logit_scale if hasattr(trainer.model, "logit_scale") else None
    frozen = [p for n, p in trainer.model.named_parameters() if not p.requires_grad and p.dim() == 2]
    assert any(p.dtype == torch.float16 for p in frozen), "CLIP's fp16 weights were cast away"
    assert clip_weight is None or torch.isfinite(clip_weight).all()

    if not trainer.has_trainable:  # zero-shot CLIP: evaluation only
        accuracy = trainer.test()
        assert math.isfinite(accuracy)
        return

    losses = []
    compute_loss = trainer.compute_loss

    def recording(batch):
        loss, logits = compute_loss(batch)
        losses.append(loss.detach())
        return loss, logits

    trainer.compute_loss = recording
    trainer.train()  # one epoch, then the final test
    assert losses and all(torch.isfinite(loss).all() for loss in losses), losses
    for param_name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            continue
        assert torch.isfinite(param).all(), param_name
        assert param.grad is None or param.grad.dtype == param.dtype, param_name
        momentum = trainer.optim.state.get(param, {}).get("momentum_buffer")
        assert momentum is None or momentum.dtype == param.dtype, param_name

    checkpoint_dir = tmp_path / name / trainer.checkpoint_name
    saved = load_checkpoint(str(checkpoint_dir / "model.pth.tar-1"))["state_dict"]
    live = trainer.checkpoint_module().state_dict()
    assert all(saved[k].dtype == live[k].dtype for k in saved if k in live)

    batch = next(iter(trainer.test_loader))
    with torch.no_grad(), trainer.precision.autocast():
        trainer.model.eval()
        logits = trainer.model_inference(batch["img"].to(trainer.device), trainer.cached_text_features())
    # one column per class of the evaluated split (PromptKD scores one half of its classes)
    assert logits.shape[0] == len(batch["label"]) and logits.shape[1] > int(batch["label"].max())
    assert torch.isfinite(logits).all()
    stage1_dirs[name] = str(tmp_path / name)
