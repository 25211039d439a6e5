"""benchmarks/grid_cost.py: the grid's step counts come from the configs, FLOPs are counted exactly."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

import grid_cost  # noqa: E402


def test_flop_count_of_a_linear_layer():
    layer = torch.nn.Linear(16, 8)
    with grid_cost.FlopCount() as counter:
        layer(torch.randn(4, 16))
    assert counter.total == 2 * 4 * 16 * 8


def test_bilinear_fit_is_exact_on_bilinear_costs():
    cost = {(c, n): 5 + 2 * c + 3 * n + 0.5 * c * n for c in (2, 6) for n in (1, 3)}
    fitted = grid_cost.fit_bilinear(cost)
    assert abs(fitted(500, 128) - (5 + 1000 + 384 + 0.5 * 500 * 128)) < 1e-6


def test_rows_for_the_tiny_clip(capsys):
    grid_cost.main(["--tiny", "--methods", "CoOp,DPC_CoOp", "--classes", "2", "4", "--batch", "1", "2"])
    rows = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()}
    # CoOp (vit_b16_ctxv1: batch 32, 200 epochs; ImageNet 50): 71,700 steps a seed, 3 seeds
    assert rows["CoOp"][0] == "215,100"
    # DPC stage 2 (batch 4, 20 epochs): 16 shots x 549 base classes / 4 x 20 = 43,920 a seed
    assert rows["CoOp + DPC"][0] == f"{3 * 20 * sum(16 * -(-n // 2) // 4 for n in (1000, 100, 37, 196, 102, 101, 100, 397, 47, 10, 101)):,}"
    assert float(rows["CoOp + DPC"][1]) > 0


def test_promptkd_trains_on_every_train_image(capsys):
    grid_cost.main(["--tiny", "--methods", "PromptKD,DPC_PromptKD", "--classes", "2", "4", "--batch", "2", "3"])
    rows = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()}
    # (batches of 2 or more: the student projector's BatchNorm trains)
    # PromptKD (batch 8, 20 epochs, 0 shots): the full train split of all classes, 3 seeds
    assert rows["PromptKD"][0] == f"{3 * 20 * sum(n // 8 for n in grid_cost.TRAIN_IMAGES.values()):,}"
    # its DPC stage 2 is a 16-shot base-class run (batch 4, 20 epochs), the teacher in its step
    assert rows["PromptKD + DPC"][0] == f"{3 * 20 * sum(16 * -(-n // 2) // 4 for n in (1000, 100, 37, 196, 102, 101, 100, 397, 47, 10, 101)):,}"
    assert float(rows["PromptKD + DPC"][1]) > 0
