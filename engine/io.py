"""Atomic file writes: a crash never leaves a half-written checkpoint or result file."""
import json
import os
import tempfile

import torch

TEMP_PREFIX = ".tmp-"  # an interrupted write leaves `<folder>/.tmp-*`; train.py removes them on start


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj, **dump_kwargs):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, **dump_kwargs).encode()))


def atomic_write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))
