"""One place that turns `PREC` (fp16 | fp32 | amp | bf16) into dtypes, autocast and scaling.

Reference meanings (docs/engine.md, "Precision"): fp16 keeps CLIP's mixed fp16/fp32 weights and trains
fp16 prompt tensors with no loss scaling; fp32 converts CLIP to fp32; amp converts to fp32
and runs forward under CUDA autocast with a GradScaler. bf16 is ours: fp32 parameters,
bfloat16 autocast. On a CPU fp16 falls back to fp32 (CPU half matmuls are slow or missing).

Test-only switch: `TRAIN_TEST_CPU_FP16=1` keeps PREC fp16 on the CPU, so the tests run the real
fp16 path (the one GPU users run) without a GPU. It is not a user option: slow, and not how the
reference behaves on a CPU.
"""
import contextlib
import os
from dataclasses import dataclass

import torch

from engine.errors import ConfigError

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
TEST_CPU_FP16_ENV = "TRAIN_TEST_CPU_FP16"  # tests only: real fp16 on the CPU


@dataclass
class Precision:
    name: str            # effective precision after the CPU fallback
    device: torch.device

    @property
    def keeps_fp16_weights(self):
        return self.name == "fp16"

    def prepare_clip(self, clip_model):
        """Cast the freshly loaded (fp16) CLIP as the reference does for this precision."""
        return clip_model if self.keeps_fp16_weights else clip_model.float()

    def autocast(self):
        if self.name == "amp" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_scaler(self):
        """A GradScaler for amp on CUDA; None otherwise (fp16 trains without loss scaling)."""
        if self.name == "amp" and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None


def resolve_precision(prec, device):
    if prec not in PRECISIONS:
        raise ConfigError(f"PREC must be one of {', '.join(PRECISIONS)}, got {prec!r}")
    device = torch.device(device)
    if prec == "fp16" and device.type != "cuda" and os.environ.get(TEST_CPU_FP16_ENV) != "1":
        print("PREC fp16 is not supported on CPU: running in fp32 instead")
        prec = "fp32"
    return Precision(prec, device)
