"""CoOp model: parameters, checkpoint keys, gradients, class-specific context."""
import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from tests.helpers.models import method_cfg
from trainers.coop import CoOpModel
from trainers.prompting import tokenize
from trainers.zsclip import ZeroshotCLIPModel

CLASSNAMES = ["face", "leopard", "motorbike"]


def coop_cfg(**keys):
    return method_cfg("COOP", keys)


def test_fp16_clip_gives_fp16_context(tiny_clip_path):
    model = CoOpModel(coop_cfg(N_CTX=4), CLASSNAMES, load_clip_to_cpu(tiny_clip_path))
    assert model.prompt_learner.ctx.dtype == torch.float16  # reference: no fp32 master copy


def test_checkpoint_keys_are_the_official_ones(clip_fp32):
    learner = CoOpModel(coop_cfg(N_CTX=4), CLASSNAMES, clip_fp32).prompt_learner
    assert list(learner.state_dict()) == ["ctx", "token_prefix", "token_suffix"]
    assert learner.state_dict()["token_suffix"].shape == (3, 72, 128)


def test_only_ctx_gets_gradients(clip_fp32):
    model = CoOpModel(coop_cfg(N_CTX=4), CLASSNAMES, clip_fp32)
    for name, param in model.named_parameters():
        param.requires_grad_(name == "prompt_learner.ctx")
    logits = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"prompt_learner.ctx"}
    assert model.prompt_learner.ctx.grad.abs().sum() > 0


def test_phrase_context_reproduces_the_handcrafted_prompt(clip_fp32):
    """With ctx = embeddings of "a photo of a", CoOp's text features equal CLIP's for the text."""
    model = CoOpModel(coop_cfg(CTX_INIT="a photo of a"), CLASSNAMES, clip_fp32)
    with torch.no_grad():
        ours = model.encode_text()
        reference = clip_fp32.encode_text(tokenize([f"a photo of a {c}." for c in CLASSNAMES]))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_cached_and_uncached_logits_agree(clip_fp32):
    model = CoOpModel(coop_cfg(N_CTX=4), CLASSNAMES, clip_fp32).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images, text_features=model.encode_text()))


def test_class_specific_context_shape_and_transfer_failure(clip_fp32):
    model = CoOpModel(coop_cfg(N_CTX=2, CSC=True), CLASSNAMES, clip_fp32)
    assert model.prompt_learner.ctx.shape == (3, 2, 128)
    other = CoOpModel(coop_cfg(N_CTX=2, CSC=True), CLASSNAMES[:2], clip_fp32)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.prompt_learner.load_state_dict({"ctx": model.prompt_learner.ctx.data}, strict=False)


def test_zero_shot_features_are_clip_encode_text(clip_fp32):
    model = ZeroshotCLIPModel(clip_fp32, ["great_white_shark", "face"], "a photo of a {}.")
    reference = clip_fp32.encode_text(tokenize(["a photo of a great white shark.", "a photo of a face."]))
    torch.testing.assert_close(model.encode_text(), reference.detach(), rtol=1e-5, atol=1e-5)
