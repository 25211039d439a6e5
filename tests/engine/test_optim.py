"""LR schedule values (docs/engine.md) and optimizer construction."""
import math

import pytest
import torch

from engine.config import get_cfg_default
from engine.optim import build_lr_scheduler, build_optimizer


def optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    cfg.merge_from_list(["NAME", "sgd", "LR", 0.002, "LR_SCHEDULER", "cosine", "MAX_EPOCH", 4,
                         "WARMUP_EPOCH", 1, "WARMUP_TYPE", "constant", "WARMUP_CONS_LR", 1e-5])
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def epoch_lrs(cfg):
    """LR each epoch trains at: the scheduler steps once after the last batch of an epoch."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer([param], cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(cfg.MAX_EPOCH):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_constant_warmup_then_lagging_cosine_matches_reference_run():
    # Values observed in the official CoOp run with T = 4 (constant warm-up, then the cosine one epoch behind).
    assert epoch_lrs(optim_cfg()) == pytest.approx([1e-5, 2e-3, 1.7071e-3, 1e-3], rel=1e-4)


@pytest.mark.parametrize("max_epoch", [2, 5, 10, 50])
def test_closed_form(max_epoch):
    lr = 0.0035
    expected = [1e-5] + [lr * (1 + math.cos(math.pi * (e - 1) / max_epoch)) / 2 for e in range(1, max_epoch)]
    assert epoch_lrs(optim_cfg(LR=lr, MAX_EPOCH=max_epoch)) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_maple_paper_schedule():
    lrs = epoch_lrs(optim_cfg(LR=0.0035, MAX_EPOCH=5))
    assert lrs == pytest.approx([1e-5, 0.0035, 0.003166, 0.002291, 0.001209], rel=1e-3)


def test_linear_warmup_and_no_warmup():
    assert epoch_lrs(optim_cfg(WARMUP_EPOCH=-1, MAX_EPOCH=2)) == pytest.approx([0.002, 0.001])
    lrs = epoch_lrs(optim_cfg(WARMUP_TYPE="linear", WARMUP_EPOCH=2, WARMUP_MIN_LR=1e-4, MAX_EPOCH=4))
    assert lrs == pytest.approx([1e-4, 0.001, 0.002, 0.002 * (1 + math.cos(math.pi / 4)) / 2])


def test_scheduler_state_round_trip_resumes_the_same_lrs():
    cfg = optim_cfg(MAX_EPOCH=6)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], cfg)
    sched = build_lr_scheduler(opt, cfg)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    # The trainer's order: build both, then restore the optimizer, then the scheduler.
    opt2 = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched2 = build_lr_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    for _ in range(2):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_sgd_hyper_parameters_and_only_trainable_params():
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    trained = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([frozen, trained], optim_cfg())
    group = opt.param_groups[0]
    assert group["params"] == [trained]
    assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (0.9, 5e-4, 0, False)


def test_unknown_scheduler_is_a_clear_error():
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        epoch_lrs(optim_cfg(LR_SCHEDULER="poly"))
