"""Checkpoint files laid out exactly as the official Dassl-based code writes them."""
import os
import sys
import types

import torch


def make_official_style_checkpoint(path, state_dict, epoch):
    """A file laid out like Dassl's: the scheduler is a pickled Dassl warm-up object that
    holds a CosineAnnealingLR object, which references the SGD optimizer."""
    module = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler:
        pass

    ConstantWarmupScheduler.__module__ = module.__name__
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    fake_modules = {"dassl": types.ModuleType("dassl"), "dassl.optim": types.ModuleType("dassl.optim"),
                    module.__name__: module}
    sys.modules.update(fake_modules)
    try:
        param = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 4.0)
        scheduler_state = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": epoch,
                           "wrapper": ConstantWarmupScheduler()}
        torch.save({"state_dict": state_dict, "epoch": epoch, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler_state, "val_result": None}, path)
        # Dassl's save_checkpoint also points `checkpoint` at the newest file
        with open(os.path.join(os.path.dirname(path), "checkpoint"), "w") as f:
            f.write(os.path.basename(path) + "\n")
    finally:
        for name in fake_modules:
            del sys.modules[name]
