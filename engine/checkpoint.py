"""Checkpoints in Dassl's layout, written atomically, read without unsafe unpickling.

Layout (the official one; docs/engine.md, "Checkpoints"): `<output>/<model_name>/model.pth.tar-<epoch>` plus a text file
`checkpoint` naming the latest save. Official files pickle Dassl's scheduler object
(and the optimizer it references), which torch's safe loader refuses. We never fall
back to unrestricted unpickling: a restricted unpickler rebuilds tensors and plain
containers, turns the known scheduler/optimizer classes into inert placeholders
(their code never runs), and refuses every other global with a clear message.
"""
import os
import pickle
import re
import types
import zipfile

import torch

from engine.errors import CheckpointError, MissingFileError, refused_global, short_reason
from engine.io import atomic_torch_save, atomic_write_text

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


class _Placeholder:
    """Stands in for a pickled scheduler/optimizer object; stores its state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


# Globals official checkpoint files contain besides tensors: Dassl's warm-up scheduler,
# the torch scheduler/optimizer objects it references, and standard containers.
_PLACEHOLDER_MODULES = ("dassl.", "torch.optim.", "trainers.", "utils.")
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
    ("builtins", "float"), ("builtins", "int"), ("builtins", "bool"), ("builtins", "str"),
    ("builtins", "object"), ("copyreg", "_reconstructor"), ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "float16"), ("torch", "float32"), ("torch", "bfloat16"), ("torch", "float64"),
    ("torch", "int64"), ("torch", "int32"), ("torch", "bool"), ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"), ("functools", "partial"), ("weakref", "ref"),
}


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint that names Python objects we do not load (unpickling them could run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)  # protocol-2 pickles name Python 2 modules
        if (module, name) in _SAFE_GLOBALS or module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        if module.startswith(_PLACEHOLDER_MODULES):
            return _Placeholder
        raise UnsafeCheckpointError(
            f"Refusing to load '{module}.{name}' from a checkpoint: only tensors, plain containers "
            "and Dassl's optimizer/scheduler objects are accepted. This file is not a CoOp-family checkpoint "
            "(or was altered); it is not loaded because unpickling it could run arbitrary code."
        )


_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kwargs: _RestrictedUnpickler(f, **kwargs).load(),
    __name__="restricted_pickle",
)


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
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({short_reason(err)}): the file is truncated or corrupt (an interrupted "
            "copy?). Copy it again, or remove it to train that epoch again") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a prompt-learning checkpoint: it has no 'state_dict' (it holds {keys})")
    return checkpoint
