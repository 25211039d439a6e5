"""IVLP model: tensors, depth rules, zero-depth equals plain CLIP, the prompted forward by hand, gradients."""
import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from trainers.ivlp import IVLPModel, is_ivlp_trainable
from trainers.prompting import clip_logits, tokenize

CLASSNAMES = ["face", "great_white_shark", "motorbike"]


def ivlp_opts(**overrides):
    opts = CN(dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PROMPT_DEPTH_VISION=9,
                   PROMPT_DEPTH_TEXT=9))
    opts.update(overrides)
    return opts


@pytest.fixture
def clip_fp32(tiny_clip_path):
    """A fresh fp32 tiny CLIP per test: IVLP attaches its deep prompts to CLIP's own blocks."""
    return load_clip_to_cpu(tiny_clip_path).float()


def trainable(model):
    return sorted(name for name, _ in model.named_parameters() if is_ivlp_trainable(name))


def test_tensors_follow_the_tower_sizes_and_depth_rules(clip_fp32):
    model = IVLPModel(ivlp_opts(PROMPT_DEPTH_VISION=2, PROMPT_DEPTH_TEXT=9), CLASSNAMES, clip_fp32)
    # The tiny CLIP has 3 layers per tower: depth 9 acts as 3; depth 2 prompts block 1 only.
    assert trainable(model) == [
        "image_encoder.VPT", "image_encoder.transformer.resblocks.1.VPT_shallow", "prompt_learner.ctx",
        "text_encoder.transformer.resblocks.1.VPT_shallow", "text_encoder.transformer.resblocks.2.VPT_shallow"]
    assert model.image_encoder.VPT.shape == (4, clip_fp32.visual.ln_pre.weight.shape[0])
    assert model.image_encoder.VPT.dtype == torch.float32
    assert model.prompt_learner.ctx.shape == (4, clip_fp32.ln_final.weight.shape[0])
    with pytest.raises(ValueError, match="PROMPT_DEPTH_TEXT"):
        IVLPModel(ivlp_opts(PROMPT_DEPTH_TEXT=0), CLASSNAMES, clip_fp32)


def test_vision_depth_zero_has_no_vision_prompt(clip_fp32):
    model = IVLPModel(ivlp_opts(PROMPT_DEPTH_VISION=0, PROMPT_DEPTH_TEXT=1), CLASSNAMES, clip_fp32)
    assert trainable(model) == ["prompt_learner.ctx"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), clip_fp32.encode_image(images))


def test_phrase_init_with_depth_one_reproduces_zero_shot_clip_text(clip_fp32):
    """4 tokens of `a photo of a` and no deep prompts: the text features are CLIP's own."""
    model = IVLPModel(ivlp_opts(PROMPT_DEPTH_VISION=0, PROMPT_DEPTH_TEXT=1), CLASSNAMES, clip_fp32)
    texts = ["a photo of a face.", "a photo of a great white shark.", "a photo of a motorbike."]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(), clip_fp32.encode_text(tokenize(texts)), rtol=1e-5, atol=1e-5)


def test_prompted_forward_by_hand(clip_fp32):
    """Deep prompts replace text positions 1..n and the last n vision tokens at blocks 1..J-1."""
    torch.manual_seed(0)
    model = IVLPModel(ivlp_opts(N_CTX_VISION=3, N_CTX_TEXT=2, PROMPT_DEPTH_VISION=3, PROMPT_DEPTH_TEXT=2),
                      CLASSNAMES, clip_fp32).eval()
    images = torch.randn(2, 3, 32, 32)
    visual = clip_fp32.visual
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding + torch.zeros(2, 1, x.shape[-1]), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(torch.cat([x, model.image_encoder.VPT.expand(2, -1, -1)], dim=1)).permute(1, 0, 2)
        for k, block in enumerate(visual.transformer.resblocks):
            if k >= 1:
                x = torch.cat([x[:-3], block.VPT_shallow.unsqueeze(1).expand(-1, 2, -1)], dim=0)
            x = block(x)
        image_features = visual.ln_post(x[0]) @ visual.proj

        prompts = model.prompt_learner()
        t = prompts + clip_fp32.positional_embedding
        t = t.permute(1, 0, 2)
        for k, block in enumerate(clip_fp32.transformer.resblocks):
            if k == 1:
                t = torch.cat([t[:1], block.VPT_shallow.unsqueeze(1).expand(-1, 3, -1), t[3:]], dim=0)
            t = block(t)
        t = clip_fp32.ln_final(t.permute(1, 0, 2))
        text_features = t[torch.arange(3), model.prompt_learner.tokenized_prompts.argmax(-1)] @ clip_fp32.text_projection
        expected = clip_logits(image_features, text_features, clip_fp32.logit_scale)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)


def test_gradients_reach_exactly_the_prompts(clip_fp32):
    model = IVLPModel(ivlp_opts(PROMPT_DEPTH_VISION=3, PROMPT_DEPTH_TEXT=3), CLASSNAMES, clip_fp32)
    for name, param in model.named_parameters():
        param.requires_grad_(is_ivlp_trainable(name))
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    with_grad = sorted(n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)
    assert with_grad == trainable(model)
