"""Readers of the official code's file formats (CoOp/Dassl), read without unsafe unpickling.

The official code pickles Python objects of its own into the files it writes, which a plain
`pickle.load` would import and run. Each reader here allows the few globals the format needs,
turns the official classes into inert stand-ins, and refuses every other global with a clear
message, so a crafted file cannot run code:

- Dassl's dataset caches (`split_fewshot/shot_K-seed_S.pkl`, ImageNet's `preprocessed.pkl`);
- Dassl's checkpoints (`model.pth.tar-<E>`), which pickle its scheduler and optimizer objects.

And the official logs (`log.txt`), read as CoOp's `parse_test_res.py` reads them, for both modes of
`parse_results.py`: a run's number comes from its `results.json`, or else from its log, the last
`* accuracy: X%` after the end-of-training signal (base phase) or `=> result` (an evaluation-only log).
"""
import glob
import json
import os
import pickle
import re
import sys
import types
from collections import OrderedDict

import torch

from engine.errors import UNREADABLE_FILE_ERRORS, CheckpointError, DatasetError, short_reason


# ----------------------------------------------------------------------------------
# Dassl dataset caches: {split name: [dassl.data.datasets.base_dataset.Datum, ...]}
# ----------------------------------------------------------------------------------

class _DasslDatumUnpickler(pickle.Unpickler):
    """Reads official Dassl caches (`shot_K-seed_S.pkl`, `preprocessed.pkl`) safely.

    Only plain containers and Dassl's `Datum` are allowed; any other global is refused,
    so a crafted file cannot run code.
    """

    class _OfficialDatum:
        def __setstate__(self, state):
            self.__dict__.update(state if isinstance(state, dict) else state[1])

    _ALLOWED = {("collections", "OrderedDict"): OrderedDict, ("builtins", "list"): list,
                ("builtins", "dict"): dict}

    def find_class(self, module, name):
        if name == "Datum" and module.startswith("dassl."):
            return self._OfficialDatum
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"Refusing to load global {module}.{name} from a dataset cache")


def read_official_pickle(path, dataset_root):
    """Load an official Dassl pickle cache, re-rooting absolute paths onto `dataset_root`.

    Returns the unpickled dict with every Dassl Datum as an `(image path, label, class name)` triple.
    """
    try:
        with open(path, "rb") as f:
            raw = _DasslDatumUnpickler(f).load()
        if not isinstance(raw, dict):
            raise TypeError(f"a {type(raw).__name__}, not a dict of record lists")
    except UNREADABLE_FILE_ERRORS as err:
        raise DatasetError(f"Cannot use the cache {path} ({short_reason(err)}): it is not an official Dassl "
                           "cache, or it is damaged. Delete it; the run rebuilds it") from err
    folder = os.path.basename(os.path.normpath(dataset_root))

    def reroot(impath):
        marker = f"/{folder}/"
        if marker in impath:
            return os.path.join(dataset_root, impath.rsplit(marker, 1)[1])
        return impath

    def convert(item):
        d = item.__dict__
        return reroot(d["_impath"]), int(d["_label"]), d["_classname"]

    try:
        return {key: [convert(item) for item in items] for key, items in raw.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"Cannot use the cache {path}: its records are not Dassl's Datum ({short_reason(err)}). "
                           "Delete it; the run rebuilds it") from err


# ----------------------------------------------------------------------------------
# Dassl checkpoints: tensors and containers, plus its pickled scheduler/optimizer objects
# ----------------------------------------------------------------------------------

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


def read_official_checkpoint(path):
    """Load an official Dassl checkpoint on the CPU with the restricted unpickler: tensors and containers
    as saved, scheduler/optimizer objects as inert placeholders; any other global raises
    UnsafeCheckpointError."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)


# ----------------------------------------------------------------------------------
# Official logs: the number a run printed
# ----------------------------------------------------------------------------------

TRAIN_SIGNALS = ("Finish training", "Finished training")  # Dassl >= 0.6.1, and the older spelling
TEST_SIGNALS = ("=> result",)


def log_files(run_dir, newest=False):
    """The logs to try, in order: `log.txt` only (the official choice: the first run's log), or with `newest`
    the rerun logs `log.txt-<timestamp>` newest first and then `log.txt`."""
    first = os.path.join(run_dir, "log.txt")
    logs = [first] if os.path.isfile(first) else []
    if newest:
        reruns = sorted(glob.glob(os.path.join(glob.escape(run_dir), "log.txt-*")))  # timestamps sort in time order
        logs = [p for p in reversed(reruns) if os.path.isfile(p)] + logs
    return logs


def read_log(path, signals, keyword="accuracy"):
    """The last `* <keyword>: X%` after a line equal to one of `signals`; None if there is none."""
    pattern = re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")
    started, value = False, None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in signals:
                started = True
            match = pattern.search(line)
            if match and started:
                value = float(match.group(1))
    return value


def read_run(run_dir, signals, keyword="accuracy", newest_log=False, from_logs=False):
    """(value, file it came from) for one run: results.json first, else the log; (None, None)."""
    results = os.path.join(run_dir, "results.json")
    if not from_logs and os.path.isfile(results):
        try:
            with open(results) as f:
                record = json.load(f)
        except (OSError, ValueError) as err:
            print(f"Warning: unreadable {results} ({err}); reading the log instead", file=sys.stderr)
        else:
            if isinstance(record.get(keyword), (int, float)):
                return float(record[keyword]), results
    for log in log_files(run_dir, newest_log):  # the first log holding a result wins (a crashed rerun has none)
        value = read_log(log, signals, keyword)
        if value is not None:
            return value, log
    return None, None
