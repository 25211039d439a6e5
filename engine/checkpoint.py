"""Checkpoints in Dassl's layout, written atomically, read without unsafe unpickling.

Layout (the official one; docs/engine.md, "Checkpoints"): `<output>/<model_name>/model.pth.tar-<epoch>` plus a text file
`checkpoint` naming the latest save. Official files pickle Dassl's scheduler object
(and the optimizer it references), which torch's safe loader refuses. We never fall
back to unrestricted unpickling: such files go to the restricted reader of
engine/official_formats.py, which turns those objects into inert placeholders (their code
never runs) and refuses every other global with a clear message.
"""
import os
import pickle
import re
import zipfile

import torch

from engine.errors import UNREADABLE_FILE_ERRORS, CheckpointError, MissingFileError, refused_global, short_reason
from engine.io import atomic_torch_save, atomic_write_text
from engine.official_formats import UnsafeCheckpointError, read_official_checkpoint

CHECKPOINT_PREFIX = "model.pth.tar-"


def save_checkpoint(state, save_dir, epoch, file_name=None):
    """Write `model.pth.tar-<epoch>` (or `file_name`, e.g. model-best.pth.tar) and point
    `checkpoint` at it, as Dassl does for every save; returns the file path."""
    path = os.path.join(save_dir, file_name or f"{CHECKPOINT_PREFIX}{epoch}")
    atomic_torch_save(state, path)
    atomic_write_text(os.path.join(save_dir, "checkpoint"), os.path.basename(path) + "\n")
    print(f"Checkpoint saved to {path}")
    return path


def latest_checkpoint(save_dir):
    """File named on the first line of `<save_dir>/checkpoint`, or None if there is none."""
    pointer = os.path.join(save_dir, "checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = os.path.basename(f.readline().strip())  # Dassl writes a file name; never follow a path elsewhere
    path = os.path.join(save_dir, name)
    return path if os.path.isfile(path) else None


def checkpoint_epochs(save_dir):
    """Epochs of the `model.pth.tar-<E>` files present in `save_dir`, ascending."""
    if not os.path.isdir(save_dir):
        return []
    pattern = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)$")
    return sorted(int(m.group(1)) for f in os.listdir(save_dir) if (m := pattern.match(f)))


def load_checkpoint(path):
    """Load a checkpoint dict (ours or an official one) on the CPU, safely."""
    if not os.path.isfile(path):
        raise MissingFileError(f'Model not found at "{path}"')
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") for name in archive.namelist()):
                raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint (a dict with "
                                      "'state_dict' and 'epoch'); it is not loaded, since opening it runs its code")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if not refused_global(err):
                raise
            # Official files pickle Dassl's scheduler object: read them with the restricted unpickler.
            checkpoint = read_official_checkpoint(path)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except UNREADABLE_FILE_ERRORS as err:
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({short_reason(err)}): the file is truncated or corrupt (an interrupted "
            "copy?). Copy it again, or remove it to train that epoch again") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a prompt-learning checkpoint: it has no 'state_dict' (it holds {keys})")
    return checkpoint
