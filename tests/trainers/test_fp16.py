"""Every registered trainer trains and evaluates in real fp16 (the path GPU users run).

On a CPU, PREC fp16 normally falls back to fp32; the test-only switch `TRAIN_TEST_CPU_FP16=1`
keeps it. The trainers are taken from the registry, so a trainer added later is covered too:
if it needs more than its paper config to run on the tiny CLIP, add it to `EXTRA_SETUP`
(tests/helpers/registered.py).
"""
import math
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.precision import TEST_CPU_FP16_ENV
from tests.helpers.registered import build, extra_opts, stage1_opts, unique_trainers


@pytest.fixture(scope="module")
def fp16_on_cpu():
    previous = os.environ.get(TEST_CPU_FP16_ENV)
    os.environ[TEST_CPU_FP16_ENV] = "1"
    yield
    if previous is None:
        del os.environ[TEST_CPU_FP16_ENV]
    else:
        os.environ[TEST_CPU_FP16_ENV] = previous


@pytest.mark.parametrize("name", unique_trainers())
def test_trainer_trains_and_evaluates_in_fp16(name, fp16_on_cpu, stage1_dirs, data_root, tiny_clip_path, tiny_opts,
                                              tmp_path, request):
    opts = extra_opts(name, request)

    def train_backbone(backbone):
        build(backbone, data_root, tiny_clip_path, tiny_opts, tmp_path / backbone, opts).train()
        return str(tmp_path / backbone)

    opts += stage1_opts(name, stage1_dirs, train_backbone)
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
