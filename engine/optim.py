"""Optimizer and LR schedule (Dassl's, rewritten to run on current torch).

The warm-up wrappers reproduce Dassl's `ConstantWarmupScheduler` / `LinearWarmupScheduler`
around torch's own `CosineAnnealingLR`, so the per-epoch LRs are bit-identical to the
reference (docs/engine.md): epoch 0 at WARMUP_CONS_LR, epoch 1 at LR, then the cosine
lagging one epoch behind. Dassl's version passes a positional `verbose` argument that
current torch rejects; ours does not (README "Differences").
"""
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR, MultiStepLR

from engine.errors import ConfigError


def build_optimizer(params, optim_cfg):
    """SGD / Adam / AdamW / RMSprop over one parameter group, with Dassl's hyper-parameters."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("No trainable parameters: the trainer froze everything")
    name = optim_cfg.NAME
    if name == "sgd":
        return torch.optim.SGD(params, lr=optim_cfg.LR, momentum=optim_cfg.MOMENTUM,
                               weight_decay=optim_cfg.WEIGHT_DECAY, dampening=optim_cfg.SGD_DAMPNING,
                               nesterov=optim_cfg.SGD_NESTEROV)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY,
                                betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2), amsgrad=name == "amsgrad")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY,
                                 betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=optim_cfg.LR, momentum=optim_cfg.MOMENTUM,
                                   weight_decay=optim_cfg.WEIGHT_DECAY, alpha=optim_cfg.RMSPROP_ALPHA)
    raise ConfigError(f"Unsupported OPTIM.NAME '{name}'; choose sgd, adam, amsgrad, adamw or rmsprop")


class _WarmupScheduler(LRScheduler):
    """Runs a warm-up for `warmup_epoch` steps, then hands every step to `successor`."""

    def __init__(self, optimizer, successor, warmup_epoch):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        self.successor.load_state_dict(state.pop("successor"))
        self.__dict__.update(state)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return self.warmup_lrs()

    def warmup_lrs(self):
        """Learning rates during the warm-up."""
        raise NotImplementedError


class ConstantWarmupScheduler(_WarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def warmup_lrs(self):
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_WarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, min_lr):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def warmup_lrs(self):
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer, optim_cfg):
    """Per-epoch scheduler: cosine / single_step / multi_step, optionally behind a warm-up."""
    name = optim_cfg.LR_SCHEDULER
    max_epoch = optim_cfg.MAX_EPOCH
    if name == "cosine":
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))
    elif name == "single_step":
        stepsize = optim_cfg.STEPSIZE[0] if isinstance(optim_cfg.STEPSIZE, (list, tuple)) else optim_cfg.STEPSIZE
        scheduler = StepLR(optimizer, step_size=max_epoch if stepsize <= 0 else stepsize, gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        scheduler = MultiStepLR(optimizer, milestones=list(optim_cfg.STEPSIZE), gamma=optim_cfg.GAMMA)
    else:
        raise ConfigError(f"Unsupported OPTIM.LR_SCHEDULER '{name}'; choose cosine, single_step or multi_step")

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        if optim_cfg.WARMUP_TYPE == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
        elif optim_cfg.WARMUP_TYPE == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ConfigError(f"Unsupported OPTIM.WARMUP_TYPE '{optim_cfg.WARMUP_TYPE}'; choose constant or linear")
    return scheduler
