"""MaPLe model: tensors and dtypes, RNG order, layer-by-layer forward against the spec, gradients."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from tests.helpers.models import method_cfg, set_trainable
from trainers.maple import MaPLe, MaPLeModel
from trainers.prompting import eot_indices, tokenize

CLASSNAMES = ["face", "great_white_shark", "motorbike"]


def maple_cfg(**keys):
    return method_cfg("MAPLE", keys)


def test_tensors_and_dtypes_under_fp16(tiny_clip_path):
    learner = MaPLeModel(maple_cfg(PROMPT_DEPTH=3), CLASSNAMES, load_clip_to_cpu(tiny_clip_path)).prompt_learner
    assert learner.ctx.shape == (2, 128) and learner.ctx.dtype == torch.float16
    assert learner.proj.weight.shape == (128, 128) and learner.proj.weight.dtype == torch.float16
    assert len(learner.compound_prompts_text) == len(learner.compound_prompt_projections) == 2
    assert all(p.dtype == torch.float32 and p.shape == (2, 128) for p in learner.compound_prompts_text)
    first, second = learner.compound_prompt_projections
    assert first.weight.dtype == torch.float32 and torch.equal(first.weight, second.weight)  # deep copies
    assert learner.token_suffix.shape == (3, 77 - 1 - 2, 128)
    assert sorted(learner.state_dict()) == sorted([
        "ctx", "token_prefix", "token_suffix", "proj.weight", "proj.bias", "compound_prompts_text.0",
        "compound_prompts_text.1", "compound_prompt_projections.0.weight", "compound_prompt_projections.0.bias",
        "compound_prompt_projections.1.weight", "compound_prompt_projections.1.bias"])


def test_phrase_init_keeps_the_rest_of_the_phrase_fixed(clip_fp32):
    """`a photo` is learnable, `of a` stays in the suffix: prompts embed `a photo of a <name>.`."""
    learner = MaPLeModel(maple_cfg(PROMPT_DEPTH=1), CLASSNAMES, clip_fp32).prompt_learner
    prompts, deep = learner.text_prompts()
    expected = clip_fp32.token_embedding(tokenize(["a photo of a face.", "a photo of a great white shark.",
                                                    "a photo of a motorbike."]))
    torch.testing.assert_close(prompts, expected)
    assert deep == []


@pytest.mark.parametrize("depth, ctx_init", [(1, "a photo of a"), (3, "a photo of a"), (2, "")])
def test_construction_draws_in_the_reference_order(clip_fp32, depth, ctx_init):
    torch.manual_seed(7)
    learner = MaPLeModel(maple_cfg(PROMPT_DEPTH=depth, CTX_INIT=ctx_init), CLASSNAMES, clip_fp32).prompt_learner
    after = torch.get_rng_state()

    torch.manual_seed(7)  # replay the reference RNG order: [ctx fill], proj, deep text prompts, one projection layer
    if not ctx_init:
        ctx = torch.empty(2, 128).normal_(std=0.02)
        torch.testing.assert_close(learner.ctx, ctx, rtol=0, atol=0)
    proj = nn.Linear(128, 128)
    deep = [torch.empty(2, 128).normal_(std=0.02) for _ in range(depth - 1)]
    coupling = nn.Linear(128, 128)
    assert torch.equal(torch.get_rng_state(), after)
    assert torch.equal(learner.proj.weight, proj.weight) and torch.equal(learner.proj.bias, proj.bias)
    for ours, expected in zip(learner.compound_prompts_text, deep):
        assert torch.equal(ours, expected)
    for layer in learner.compound_prompt_projections:
        assert torch.equal(layer.weight, coupling.weight) and torch.equal(layer.bias, coupling.bias)


def reference_logits(model, clip_model, images):
    """MaPLe's forward written out with CLIP's own blocks on the full 77-token sequence."""
    learner = model.prompt_learner
    n_ctx = learner.ctx.shape[0]
    deep_text = list(learner.compound_prompts_text)
    deep_vision = [layer(p) for layer, p in zip(learner.compound_prompt_projections, deep_text)]

    prompts = torch.cat([learner.token_prefix, learner.ctx.expand(3, -1, -1), learner.token_suffix], dim=1)
    x = (prompts + clip_model.positional_embedding).permute(1, 0, 2)
    for k, block in enumerate(clip_model.transformer.resblocks):
        if 1 <= k <= len(deep_text):
            x = torch.cat([x[:1], deep_text[k - 1].expand(3, -1, -1).permute(1, 0, 2), x[1 + n_ctx:]])
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    text = x[torch.arange(3), eot_indices(learner.tokenized_prompts)] @ clip_model.text_projection

    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(len(images), 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, learner.proj(learner.ctx).expand(len(images), -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for k, block in enumerate(visual.transformer.resblocks):
        if 1 <= k <= len(deep_vision):
            x = torch.cat([x[:-n_ctx], deep_vision[k - 1].expand(len(images), -1, -1).permute(1, 0, 2)])
        x = block(x)
    image = visual.ln_post(x[0]) @ visual.proj
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return clip_model.logit_scale.exp() * image @ text.t()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_forward_matches_the_layer_by_layer_spec(clip_fp32, depth):
    torch.manual_seed(0)
    model = MaPLeModel(maple_cfg(PROMPT_DEPTH=depth), CLASSNAMES, clip_fp32)
    with torch.no_grad():  # move the prompts away from their init so every replacement matters
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_logits(model, clip_fp32, images), rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_prompt_tensor_and_nothing_else(clip_fp32):
    model = set_trainable(MaPLeModel(maple_cfg(PROMPT_DEPTH=3), CLASSNAMES, copy.deepcopy(clip_fp32)), MaPLe)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {n for n, _ in model.named_parameters() if n.startswith("prompt_learner.")}
    assert len(with_grad) == 1 + 2 + 2 + 4


def test_image_branch_alone_trains_the_language_context(clip_fp32):
    """Vision prompts are functions of the text prompts, so cached text features still leave
    a gradient on ctx (through proj) and on the deep text prompts (through the couplings)."""
    model = set_trainable(MaPLeModel(maple_cfg(PROMPT_DEPTH=2), CLASSNAMES, copy.deepcopy(clip_fp32)), MaPLe)
    text = model.encode_text().detach()
    F.cross_entropy(model(torch.randn(2, 3, 32, 32), text_features=text), torch.tensor([0, 1])).backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert model.prompt_learner.compound_prompts_text[0].grad.abs().sum() > 0


def test_cached_text_features_give_the_same_logits(clip_fp32):
    model = MaPLeModel(maple_cfg(PROMPT_DEPTH=3), CLASSNAMES, clip_fp32).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images, text_features=model.encode_text()))


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
def test_runs_in_fp16_weights_and_under_bf16_autocast(tiny_clip_path, prec):
    """The reference only runs in fp16 (its `proj` is always half); fp32 is covered above."""
    clip_model = load_clip_to_cpu(tiny_clip_path)
    if prec == "bf16":
        clip_model = clip_model.float()
    model = set_trainable(MaPLeModel(maple_cfg(PROMPT_DEPTH=2), CLASSNAMES, clip_model), MaPLe)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == (torch.float16 if prec == "fp16" else torch.bfloat16)
    F.cross_entropy(logits.float(), torch.tensor([0, 1])).backward()
    assert model.prompt_learner.compound_prompts_text[0].grad.dtype == torch.float32


@pytest.mark.parametrize("depth", [0, 4])
def test_prompt_depth_outside_the_towers_fails(clip_fp32, depth):
    with pytest.raises(ValueError, match="PROMPT_DEPTH must be between 1 and the number of layers \\(3\\)"):
        MaPLeModel(maple_cfg(PROMPT_DEPTH=depth), CLASSNAMES, clip_fp32)
