"""An output folder belongs to one run configuration and one process at a time.

`train.py` locks the folder (`.train.lock`, an flock: concurrent runs into it wait), removes
the temporary files an interrupted atomic write left behind, and refuses a configuration that
differs from the folder's `config.yaml`, listing the differing keys, unless
`--allow-config-change` is given. Keys that only say where things are or how fast they run
(`IGNORED_KEYS`) may change between runs of one folder.
"""
import fcntl
import os
import sys

import yaml

from engine.errors import OutputDirError, short_reason
from engine.io import TEMP_PREFIX

LOCK_FILE = ".train.lock"
CONFIG_FILE = "config.yaml"
IGNORED_KEYS = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "DATALOADER.NUM_WORKERS", "DATALOADER.PERSISTENT_WORKERS",
                "TEST.CACHE_TEXT_FEATURES", "TRAIN.PRINT_FREQ", "VERBOSE")


def lock_output_dir(path):
    """Create and lock the output folder for this process; returns the open lock file (keep it open).

    A folder locked by another run is waited for (that run finishes first; this one then
    resumes or re-tests), as base2new.sh waits for a run it shares."""
    try:
        os.makedirs(path, exist_ok=True)
        lock = open(os.path.join(path, LOCK_FILE), "a+")
    except OSError as err:
        raise OutputDirError(f"Cannot write to the output folder {os.path.abspath(path)} ({short_reason(err)}): "
                             "choose a writable --output-dir (OUTPUT_DIR)") from err
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        print(f"Output folder {path} is in use by {holder}: waiting for it to finish (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.seek(0)
    lock.truncate()
    lock.write(f"train.py (pid {os.getpid()})\n")
    lock.flush()
    return lock


def remove_stale_temp_files(path):
    """Delete the `.tmp-*` files of atomic writes that a killed run left in its folder and in the
    folder's own subfolders (checkpoint folders; not other runs' folders, which have a lock file)."""
    subfolders = [os.path.join(path, d) for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
    folders = [path] + [d for d in subfolders if not os.path.exists(os.path.join(d, LOCK_FILE))]
    removed = []
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.startswith(TEMP_PREFIX) and os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    if removed:
        print(f"Removed {len(removed)} temporary file(s) left by an interrupted run: {', '.join(removed)}")
    return removed


def _flatten(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", list(value) if isinstance(value, tuple) else value


def config_differences(path, cfg, defaults):
    """[(key, folder's value, this run's value)] between `<path>/config.yaml` and `cfg`.

    A key the folder's file lacks (added to the code since) counts at its default value.
    """
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return []
    try:
        with open(config_path) as f:
            recorded = dict(_flatten(yaml.safe_load(f) or {}))
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise OutputDirError(f"Cannot read {config_path} ({short_reason(err)}): remove it, or choose another "
                             "--output-dir") from err
    default_values = dict(_flatten(defaults))
    differences = []
    for key, value in _flatten(cfg):
        if key in IGNORED_KEYS:
            continue
        before = recorded.get(key, default_values.get(key, value))
        if before != value:
            differences.append((key, before, value))
    return differences


def check_output_config(path, cfg, defaults, allow_change=False):
    """Refuse to run in a folder whose config.yaml records another configuration."""
    differences = config_differences(path, cfg, defaults)
    if not differences:
        return
    listing = "\n".join(f"  {key}: {before!r} in the folder, {now!r} now" for key, before, now in differences)
    if allow_change:
        print(f"Warning: --allow-config-change: {path} was made with another configuration; continuing:\n{listing}")
        return
    raise OutputDirError(
        f"The output folder {path} holds a run with another configuration ({os.path.join(path, CONFIG_FILE)}):\n"
        f"{listing}\nUse another --output-dir for this configuration, or pass --allow-config-change to run here "
        "anyway (its checkpoints are then resumed and its config.yaml and results.json replaced)")
