"""Checkpoint files laid out exactly as the official Dassl-based code writes them, and the official
result parser's arithmetic."""
import os
import re
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


def official_parse_test_res(directory, end_signal="Finish training", keyword="accuracy"):
    """What CoOp's `parse_test_res.py DIRECTORY` computes (`end_signal` "=> result" for `--test-log`;
    MaPLe's and PromptSRC's copies use "Finished training"): over the sorted non-hidden entries, each of
    which must hold a `log.txt` (rerun logs `log.txt-<time>` are never read), every `* <keyword>: X%`
    after a line equal to the end signal is recorded and the last one kept; a log without the signal
    is silently dropped. Returns (mean, population std)."""
    pattern = re.compile(rf"\* {keyword}: ([\.\deE+-]+)%")
    values = []
    for entry in sorted(e for e in os.listdir(directory) if not e.startswith(".")):
        path = os.path.join(directory, entry, "log.txt")
        assert os.path.isfile(path), path
        started, value = False, None
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line == end_signal:
                    started = True
                match = pattern.search(line)
                if match and started:
                    value = float(match.group(1))
        if value is not None:
            values.append(value)
    assert values, f"nothing found in {directory}"
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
