"""Crafted files for the safety tests: archives and pickles that would run code if loaded naively."""
import math
import os
import pickle
import warnings
import zipfile
from typing import Tuple

import torch

from tests.helpers.tiny_clip import TINY_CLIP

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP, convert_weights


class WriteOnLoad(torch.nn.Module):
    """A TorchScript module whose `__setstate__` writes a file: `torch.jit.load` runs it."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.save(torch.ones(1), state[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_tiny_clip_archive(path, seed=0, write_on_load=None):
    """A tiny CLIP saved as OpenAI did (a traced TorchScript archive, fp16 weights). With
    `write_on_load`, a submodule of the archive writes that file when `torch.jit.load` opens it."""
    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP).eval()
    model.logit_scale.data.fill_(math.log(100.0))  # as make_tiny_clip does
    convert_weights(model)
    if write_on_load:
        model.ln_final.payload = torch.jit.script(WriteOnLoad(str(write_on_load)))
    example = (torch.zeros(1, 3, TINY_CLIP["image_resolution"], TINY_CLIP["image_resolution"]).half(),
               torch.zeros(1, TINY_CLIP["context_length"], dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.trace(model, example, check_trace=False).save(str(path))
    return str(path)


class RunsCommand:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def replace_archive_data(archive_path, out_path, payload):
    """A copy of a TorchScript archive whose `data.pkl` is replaced by `pickle.dumps(payload)`."""
    with zipfile.ZipFile(archive_path) as src, zipfile.ZipFile(out_path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(payload, protocol=2)
            dst.writestr(item, data)
    return str(out_path)
