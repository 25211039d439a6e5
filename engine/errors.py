"""Errors caused by the user's input, as opposed to bugs.

A `UserError` says what is wrong and how to fix it; `train.py` prints its message and exits 1
without a traceback (`--debug` or `TRAIN_DEBUG=1` show it). Anything else keeps its traceback.
Each subclass also derives from the built-in type that code catching it already expects.
Out-of-tree trainers raise `ConfigError` for a bad value of their own keys.
"""
import pickle
import struct

# What parsing a damaged or foreign file raises (torch's and pickle's unpicklers read arbitrary bytes
# as opcodes, so random data fails with almost any of these): the file cannot be read.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, TypeError, KeyError,
                          IndexError, AttributeError, struct.error)


class UserError(Exception):
    """Bad input (path, key, value, data, checkpoint); the message names the fix."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


class ConfigError(UserError, ValueError):
    """A config key or value that cannot be used."""


class UnknownNameError(UserError, KeyError):
    """An unknown trainer, dataset or config key (with a "did you mean")."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist."""


class DatasetError(UserError, RuntimeError):
    """A dataset file or folder is missing or unreadable; the message says how to fix it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is unreadable, unsafe, or does not fit the model."""


class BackboneError(UserError, RuntimeError):
    """A CLIP backbone that cannot be loaded (not CLIP, not downloadable, not safe)."""


class OutputDirError(UserError, RuntimeError):
    """The output folder cannot be used (not writable, or it holds another configuration's run)."""


# Boilerplate lines of torch's `weights_only` errors, which say nothing about the file at hand.
_BOILERPLATE = ("Weights only load failed", "In PyTorch 2.6", "Check the documentation", "Please file an issue",
                "WeightsUnpickler error:")


def short_reason(err):
    """One line for an OS or library error inside a user message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_BOILERPLATE)]
    text = (specific or lines or [""])[0]
    return f"{type(err).__name__}: {text}".rstrip(": ")


def refused_global(err):
    """The line of a `torch.load(weights_only=True)` error naming the Python object it refused, or None
    when the file is simply not a pickle (garbage, truncated)."""
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return line.strip()
    return None
