"""Simulating a run killed in the middle of training."""
import contextlib

import pytest

from engine.trainer import TrainerBase


@contextlib.contextmanager
def killed_in_epoch(monkeypatch, epoch):
    """Within the block, training raises KeyboardInterrupt when it reaches `epoch` (0-based), as a
    SIGINT would; the block expects that interrupt. Afterwards training runs normally again."""
    original = TrainerBase._run_epoch

    def run_epoch_or_die(self):
        if self.epoch == epoch:
            raise KeyboardInterrupt("simulated kill")
        original(self)

    monkeypatch.setattr(TrainerBase, "_run_epoch", run_epoch_or_die)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(TrainerBase, "_run_epoch", original)
