"""Load CLIP from a model name (downloaded to ~/.cache/clip) or a local OpenAI-format file.

Decision 4 of the spec README: `MODEL.BACKBONE.NAME` is a name such as `ViT-B/16` or a
path to a JIT archive or a plain state dict. The module is always rebuilt with
`clip.model.build_model` (as CoOp's `load_clip_to_cpu` does): that random-initialises the
module before copying the weights in, which consumes the global torch RNG exactly like
the reference, and converts weights to fp16.
"""
import os
import warnings
import zipfile

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports the deprecated pkg_resources
    import clip
    from clip.model import build_model


def resolve_backbone_path(name):
    """Local path of the checkpoint, downloading a named model to ~/.cache/clip if needed."""
    if not name:
        raise ValueError("MODEL.BACKBONE.NAME is empty: set a CLIP model name (e.g. ViT-B/16) "
                         "or the path to an OpenAI-format checkpoint (use a trainer config or --backbone)")
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded):
        return expanded
    if name in clip.available_models():
        return clip.clip._download(clip.clip._MODELS[name], os.path.expanduser("~/.cache/clip"))
    raise FileNotFoundError(
        f"MODEL.BACKBONE.NAME '{name}' is neither an existing file nor a CLIP model name "
        f"({', '.join(clip.available_models())})"
    )


def load_clip_to_cpu(name):
    """Build CLIP on the CPU in the reference's mixed fp16/fp32 precision, in eval mode."""
    path = resolve_backbone_path(name)
    if _is_jit_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated; the official files are JIT
            state_dict = torch.jit.load(path, map_location="cpu").eval().state_dict()
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
    return build_model(state_dict).eval()


def _is_jit_archive(path):
    """OpenAI's released files are TorchScript archives (a zip holding `constants.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())
