"""Load CLIP from a model name (downloaded to ~/.cache/clip) or a local OpenAI-format file.

`MODEL.BACKBONE.NAME` is a name such as `ViT-B/16` or a path to a TorchScript archive (the
format OpenAI released) or a plain state dict. The module is always rebuilt with
`clip.model.build_model` (as CoOp's `load_clip_to_cpu` does): that random-initialises the
module before copying the weights in, which consumes the global torch RNG exactly like
the reference, and converts weights to fp16.

No file is ever allowed to run code here. `torch.jit.load` would run the archive's
TorchScript (a `__setstate__` can write files), so TorchScript archives are read by
`read_torchscript_weights`, which unpickles only tensors, storages and attribute
dictionaries and never touches the archive's code; state dicts load with `weights_only`.
"""
import ast
import hashlib
import io
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict

import torch

from engine.errors import UNREADABLE_FILE_ERRORS, BackboneError, MissingFileError, refused_global, short_reason

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports the deprecated pkg_resources
    import clip
    from clip.model import build_model

CLIP_CACHE = "~/.cache/clip"
# Tensors every OpenAI CLIP state dict has (either image tower); used to tell a CLIP file apart.
_CLIP_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight")


def resolve_backbone_path(name):
    """Local path of the checkpoint, downloading a named model to ~/.cache/clip if needed."""
    if not name:
        raise BackboneError("MODEL.BACKBONE.NAME is empty: set a CLIP model name (e.g. ViT-B/16) "
                            "or the path to an OpenAI-format checkpoint (use a trainer config or --backbone)")
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded):
        return expanded
    if name in clip.available_models():
        cache = os.path.expanduser(CLIP_CACHE)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "SHA256 does not match; re-downloading"
                return clip.clip._download(clip.clip._MODELS[name], cache)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise BackboneError(
                f"Cannot download CLIP '{name}' ({short_reason(err)}). CLIP weights are downloaded to {cache} "
                f"on first use: run once with internet access, or copy {os.path.basename(clip.clip._MODELS[name])} "
                f"into {cache}, or pass the path of a local OpenAI-format file as MODEL.BACKBONE.NAME (--backbone)"
            ) from err
    where = "" if os.path.isabs(expanded) else f"; a relative path is taken from the working directory {os.getcwd()}"
    raise MissingFileError(
        f"MODEL.BACKBONE.NAME '{name}' is neither an existing file nor a CLIP model name "
        f"({', '.join(clip.available_models())}){where}"
    )


def load_clip_to_cpu(name):
    """Build CLIP on the CPU in the reference's mixed fp16/fp32 precision, in eval mode."""
    path = resolve_backbone_path(name)
    state_dict = read_clip_state_dict(path)
    missing = [key for key in _CLIP_KEYS if key not in state_dict]
    if missing:
        raise BackboneError(
            f"{path} is not a CLIP checkpoint: it has no {', '.join(repr(k) for k in missing)} "
            f"(its first keys: {list(state_dict)[:5]}). MODEL.BACKBONE.NAME (--backbone) takes a CLIP name or an "
            "OpenAI-format CLIP file; a prompt checkpoint (model.pth.tar-N) goes to --model-dir")
    try:
        return build_model(state_dict).eval()
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise BackboneError(
            f"{path} is not a complete OpenAI-format CLIP ({short_reason(err)}): a tensor that CLIP's image or "
            "text tower needs is missing or has the wrong shape. Use a file from CLIP's release (or its state dict)"
        ) from err


def read_clip_state_dict(path):
    """The tensors of a CLIP file: a TorchScript archive, or a (possibly wrapped) state dict."""
    if _is_torchscript_archive(path):
        return read_torchscript_weights(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if refused_global(err):
            raise BackboneError(
                f"Refusing to load {path}: it holds Python objects besides tensors, and unpickling it could run "
                f"code ({refused_global(err)}). Give a CLIP name or an OpenAI-format file (TorchScript archive or "
                "state dict)") from err
        raise BackboneError(f"Cannot read {path} as a PyTorch file ({short_reason(err)}): it is not an "
                            "OpenAI-format CLIP checkpoint, or it is truncated") from err
    except UNREADABLE_FILE_ERRORS as err:
        raise BackboneError(f"Cannot read {path} as a PyTorch file ({short_reason(err)}): it is not an "
                            "OpenAI-format CLIP checkpoint, or it is truncated") from err
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BackboneError(f"{path} is not a CLIP state dict (it holds a {type(loaded).__name__}, not a "
                            "dict of tensors)")
    return loaded


def _is_torchscript_archive(path):
    """OpenAI's released files are TorchScript archives (a zip holding `constants.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


# ----------------------------------------------------------------------------------
# Reading a TorchScript archive without running it
# ----------------------------------------------------------------------------------

class _ScriptObject:
    """A module object of the archive: its attributes only; no method of the archive exists here."""

    qualified_name = ""

    def __setstate__(self, state):
        self.state = state


_STORAGE_DTYPES = {"HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """A tensor view on a storage read from the archive (hooks and metadata are ignored)."""
    tensor = torch.empty(0, dtype=storage.dtype)
    return tensor.set_(storage.untyped_storage(), offset, tuple(size), tuple(stride))


class _TorchScriptUnpickler(pickle.Unpickler):
    """Rebuilds tensors, storages and module attribute dicts; every other global is refused."""

    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.classes = {}

    def find_class(self, module, name):
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self.classes:  # a fresh class per archive type, so names cannot collide
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])  # a dtype tag, not the (callable) storage class
        raise BackboneError(f"Refusing to load {self.path}: its module data names '{module}.{name}', which a "
                            "CLIP TorchScript archive never contains (it could run code). " + _CONVERT_HINT)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise BackboneError(f"Refusing to load {self.path}: unknown persistent record {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        if len(raw) < numel * dtype.itemsize:
            raise BackboneError(f"{self.path} is truncated: storage {key} has {len(raw)} bytes, "
                                f"{numel * dtype.itemsize} expected")
        if not numel:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(raw[:numel * dtype.itemsize]), dtype=dtype)


_CONVERT_HINT = ("To use such a file anyway, convert it to a plain state dict on a machine you trust: "
                 "`torch.save(torch.jit.load(FILE).state_dict(), OUT)` (this runs the archive's code), then "
                 "pass OUT as MODEL.BACKBONE.NAME")


def read_torchscript_weights(path):
    """The parameters and buffers of a TorchScript archive, as `torch.jit.load(path).state_dict()`
    would give them, read without running any of the archive's code."""
    try:
        with zipfile.ZipFile(path) as archive:
            roots = [n[:-len("/data.pkl")] for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(roots) != 1:
                raise BackboneError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
            prefix = roots[0]
            root = _TorchScriptUnpickler(io.BytesIO(archive.read(f"{prefix}/data.pkl")), archive, prefix, path).load()
            declared = _declared_tensors(archive, prefix)
    except BackboneError:
        raise
    except (zipfile.BadZipFile, *UNREADABLE_FILE_ERRORS) as err:
        raise BackboneError(f"Cannot read {path} as a TorchScript archive ({short_reason(err)}): it is "
                            "truncated or not an OpenAI-format CLIP file") from err
    state_dict = OrderedDict()
    _collect(root, "", declared, state_dict, path)
    return state_dict


def _collect(obj, prefix, declared, out, path):
    if not isinstance(obj, _ScriptObject) or not isinstance(getattr(obj, "state", None), dict):
        raise BackboneError(
            f"Refusing to load {path}: module '{prefix.rstrip('.') or '<root>'}' has custom state, i.e. code of its "
            f"own that runs while loading; an OpenAI CLIP archive has none. " + _CONVERT_HINT)
    names = declared.get(obj.qualified_name)
    for key, value in obj.state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{key}.", declared, out, path)
        elif isinstance(value, torch.Tensor) and (names is None or key in names):
            out[prefix + key] = value


def _declared_tensors(archive, prefix):
    """{qualified class name: its `__parameters__` + `__buffers__`}, read as text from the archive's
    code files (plain tensor attributes of scripted modules are not part of a state dict)."""
    declared = {}
    for name in archive.namelist():
        if not (name.startswith(f"{prefix}/code/") and name.endswith(".py")):
            continue
        module = name[len(f"{prefix}/code/"):-len(".py")].replace("/", ".")
        source = archive.read(name).decode("utf-8", "replace")
        for match in re.finditer(r"^class (\w+)\(Module\):\n((?:  .*\n|\n)*)", source, re.MULTILINE):
            body = match.group(2)
            tensors = set()
            for field in ("__parameters__", "__buffers__"):
                found = re.search(rf"^  {field} = (\[.*\])$", body, re.MULTILINE)
                if found:
                    tensors.update(ast.literal_eval(found.group(1)))
            declared[f"{module}.{match.group(1)}"] = tensors
    return declared


# ----------------------------------------------------------------------------------
# Which CLIP a run used (recorded in checkpoints)
# ----------------------------------------------------------------------------------

_FINGERPRINTS = {}


def backbone_fingerprint(name):
    """{"name": MODEL.BACKBONE.NAME, "sha256": the weights file's SHA-256}: the same file under another
    name or path has the same fingerprint. Named models take the SHA-256 that CLIP's download URL
    carries (the package checks the file against it)."""
    if name in clip.available_models() and not os.path.isfile(os.path.expanduser(name)):
        return {"name": name, "sha256": clip.clip._MODELS[name].split("/")[-2]}
    path = os.path.realpath(os.path.expanduser(name))
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()
    return {"name": name, "sha256": _FINGERPRINTS[key]}
