"""Every registered trainer, as a user runs it: train, save, reload on other classes, evaluate.

Parametrised over the trainer registry (as timm tests every registered model), so a method is
covered by registering it with a config (tests/helpers/registered.py finds the config); the
out-of-tree example `examples/my_method.py`, loaded as `--trainer-module` loads it, runs the same
check. Per trainer, on the tiny CLIP with the trainer's own config file:

1. one training step on the Caltech101 fixture's base classes: the loss is finite and a trainable
   parameter moves;
2. the checkpoint written at the end holds every trainable tensor as trained, and no CLIP weight;
3. a trainer built on other classes (the EuroSAT fixture's new half) loads it: its trainable tensors
   are the saved ones, and the tensors built from class names keep their values for the new classes;
4. its evaluation logits with cached text features (`TEST.CACHE_TEXT_FEATURES`, the default) equal
   those of the model's own per-batch forward, one column per class.
"""
import functools
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.clip_loading import read_clip_state_dict
from engine.registry import TRAINERS
from tests.conftest import REPO
from tests.helpers.registered import build, extra_opts, stage1_opts, unique_trainers

EXAMPLE_CONFIG = os.path.join(REPO, "examples", "MyMethod.yaml")
# One step: 1 shot of each of the 3 base classes (PromptKD: of all 5) in one batch of at most 4.
ONE_STEP = ["DATASET.NUM_SHOTS", "1", "TEST.NO_TEST", "True"]
# The EuroSAT fixture's new half, its 10 test images in one batch (one text pass per evaluation).
NEW_HALF = ["DATASET.SUBSAMPLE_CLASSES", "new", "DATALOADER.TEST.BATCH_SIZE", "16"]
NEW_CLASSES = ["Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake"]
# Checkpoint entries that are not model tensors: PromptSRC's record of its epoch aggregation.
RECORDS = {"gpa_parameters"}


def name_match(name, keys):
    """The key of `keys` naming the model tensor `name`: the one sharing the longest dotted suffix with it.

    A checkpoint names tensors relative to the module it saves (CoOp: `ctx` for `prompt_learner.ctx`)
    or by the official code's names (DPC_PromptKD: `prompt_learner.text_encoder...` for the
    teacher's `text_encoder...`).
    """
    def shared(key):
        a, b = name.split(".")[::-1], key.split(".")[::-1]
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    scored = sorted(((shared(k), k) for k in keys), reverse=True)
    if not scored or scored[0][0] == 0:
        return None
    assert len(scored) == 1 or scored[1][0] < scored[0][0], f"{name}: ambiguous checkpoint keys {scored[:2]}"
    return scored[0][1]


def trainable_tensors(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def buffers(trainer):
    return {name: b.detach().clone() for name, b in trainer.model.named_buffers()}


def evaluation_logits(trainer, cache_text_features):
    """The logits `test()` scores on the test split, with or without cached text features."""
    trainer.cfg.defrost()
    trainer.cfg.TEST.CACHE_TEXT_FEATURES = cache_text_features
    trainer.cfg.freeze()
    seen, process = [], trainer.evaluator.process
    trainer.evaluator.process = lambda logits, labels: (seen.append(logits.detach().float()), process(logits, labels))
    try:
        trainer.test()
    finally:
        del trainer.evaluator.process
    return torch.cat(seen)


@functools.lru_cache(maxsize=None)
def clip_weights(path):
    return read_clip_state_dict(path)


def check_checkpoint_holds_the_trainable_tensors(trainer, saved, clip_path):
    """Every trainable tensor is saved as trained; every other entry is a model tensor (a buffer such as
    the token buffers or BatchNorm statistics, or a method tensor a DPC plug-in keeps frozen) or a
    record, never a CLIP weight (the checkpoint of a prompt is not a copy of CLIP)."""
    trained = trainable_tensors(trainer)
    keys = {name: name_match(name, saved) for name in trained}
    assert None not in keys.values(), f"trainable tensors not saved: {[n for n, k in keys.items() if k is None]}"
    assert len(set(keys.values())) == len(keys), f"two trainable tensors under one key: {keys}"
    for name, key in keys.items():
        assert torch.equal(saved[key].to(trained[name]), trained[name]), f"{key} is not the trained {name}"
    model_tensors = dict(trainer.model.state_dict())
    for key in set(saved) - set(keys.values()) - RECORDS:
        assert any(name_match(name, [key]) for name in model_tensors), f"checkpoint entry {key} is no model tensor"
    clip = clip_weights(clip_path)
    for key, value in saved.items():
        constant = not torch.is_tensor(value) or not value.is_floating_point() or (value == value.flatten()[0]).all()
        if constant:
            continue  # ones, zeros: no one's weights in particular
        copied = [k for k, w in clip.items() if w.shape == value.shape and torch.equal(w.float(), value.float())]
        assert not copied, f"checkpoint entry {key} is CLIP's {copied[0]}"


def check_round_trip(name, tmp_path, request, stage1_dirs, data_root, clip_path, tiny_opts, config=None):
    """Train one step, save, reload on other classes, compare cached and uncached evaluation (module docstring)."""
    opts = extra_opts(name, request)

    def train_backbone(backbone):
        folder = tmp_path / f"stage1_{backbone}"
        build(backbone, data_root, clip_path, tiny_opts, folder, [*opts, *ONE_STEP]).train()
        return str(folder)

    opts += stage1_opts(name, stage1_dirs, train_backbone)
    run_dir = tmp_path / "train"
    trainer = build(name, data_root, clip_path, tiny_opts, run_dir, [*opts, *ONE_STEP], config=config)
    trainable = any(p.requires_grad for p in trainer.model.parameters())  # zero-shot CLIP: evaluation only
    if trainable:
        before = trainable_tensors(trainer)
        losses, compute_loss = [], trainer.compute_loss

        def recording(batch):
            loss, logits = compute_loss(batch)
            losses.append(loss.detach())
            return loss, logits

        trainer.compute_loss = recording
        trainer.train()
        assert len(losses) == 1 and torch.isfinite(losses[0]).all(), losses
        after = trainable_tensors(trainer)
        assert any(not torch.equal(before[n], after[n]) for n in before), "no trainable tensor moved"
        saved = load_checkpoint(str(run_dir / trainer.checkpoint_name / "model.pth.tar-1"))["state_dict"]
        check_checkpoint_holds_the_trainable_tensors(trainer, saved, clip_path)
        stage1_dirs.setdefault(name, str(run_dir))  # the stage 1 of this trainer's DPC plug-in

    other = build(name, data_root, clip_path, tiny_opts, tmp_path / "new", [*opts, *NEW_HALF], config=config,
                  dataset="eurosat")
    assert set(other.classnames).isdisjoint(trainer.classnames) and set(NEW_CLASSES) <= set(other.classnames)
    if trainable:
        built = buffers(other)
        other.load_model(str(run_dir), epoch=1)
        loaded = trainable_tensors(other)
        for param_name, value in loaded.items():
            assert torch.equal(value, saved[name_match(param_name, saved)].to(value)), f"{param_name} not loaded"
        for buffer_name, value in buffers(other).items():
            key = next((k for k in saved if buffer_name == k or buffer_name.endswith("." + k)), None)
            if key is None:
                continue
            if saved[key].shape != value.shape:  # built from the class names: kept as built for the new classes
                assert torch.equal(value, built[buffer_name]), f"{buffer_name} was not rebuilt for the new classes"
            else:  # e.g. BatchNorm statistics
                assert torch.equal(value, saved[key].to(value)), f"{buffer_name} was not loaded"
    cached = evaluation_logits(other, cache_text_features=True)
    uncached = evaluation_logits(other, cache_text_features=False)
    assert cached.shape == (2 * len(NEW_CLASSES), len(NEW_CLASSES))  # 2 test images per class
    assert torch.isfinite(cached).all()
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", unique_trainers())
def test_registered_trainer_round_trip(name, tmp_path, request, stage1_dirs, data_root, tiny_clip_path, tiny_opts):
    check_round_trip(name, tmp_path, request, stage1_dirs, data_root, tiny_clip_path, tiny_opts)


def test_example_trainer_file_is_covered_by_registering_it(example_trainer, tmp_path, request, stage1_dirs, data_root,
                                                           tiny_clip_path, tiny_opts):
    """A trainer file kept outside the repository: its registration and its config are all the check needs."""
    assert example_trainer in TRAINERS
    check_round_trip(example_trainer, tmp_path, request, stage1_dirs, data_root, tiny_clip_path, tiny_opts,
                     config=EXAMPLE_CONFIG)
