"""DGPrompt (reconstructed): base-prompt equivalence, generators, truncation, retention loss, gradients."""
import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from tests.helpers.models import method_cfg, set_trainable
from trainers.deep_prompting import DeepPromptedVisionEncoder
from trainers.dgprompt import DGPrompt, DGPromptModel, retention_loss
from trainers.prompting import PromptedTextEncoder, assemble_prompts, clip_logits, tokenize

CLASSNAMES = ["face", "leopard", "motorbike"]


def dgprompt_cfg(**keys):
    return method_cfg("DGPROMPT", {"DEPTH": 3, **keys}, dataset="Caltech101")  # anchors "a photo of a {}."


def build(clip_model, classnames=CLASSNAMES, **keys):
    """A DGPromptModel with requires_grad set as the engine sets it."""
    return set_trainable(DGPromptModel(dgprompt_cfg(**keys), classnames, clip_model), DGPrompt)


def perturb_generators(model, seed=0):
    """Non-zero generator outputs (fresh ones output exactly zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.prompt_learner.named_parameters():
            if name.startswith(("tgv.", "igt.")):
                param.normal_(std=0.05)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def ivlp_logits(clip_model, learner, images):
    """IVLP 4+4 deep prompts with the given base prompts, through the shared encoders (77 tokens)."""
    prompts = assemble_prompts(learner.ctx_text[0], learner.token_prefix, learner.token_suffix)
    text = PromptedTextEncoder(clip_model)(prompts, learner.tokenized_prompts, list(learner.ctx_text[1:]),
                                           truncate=False)
    image = DeepPromptedVisionEncoder(clip_model.visual)(images, learner.ctx_vision[0], list(learner.ctx_vision[1:]))
    return clip_logits(image, text, clip_model.logit_scale)


def test_without_generators_it_is_an_ivlp_model(clip_fp32, images):
    model = build(clip_fp32, TGV=False, IGT=False, TEXT_LOSS_WEIGHT=0.0, IMAGE_LOSS_WEIGHT=0.0, KL_WEIGHT=0.0)
    assert set(model.prompt_learner.state_dict()) == {"ctx_text", "ctx_vision", "token_prefix", "token_suffix"}
    with torch.no_grad():
        torch.testing.assert_close(model(images), ivlp_logits(clip_fp32, model.prompt_learner, images),
                                   rtol=1e-5, atol=1e-5)


def test_fresh_generators_give_the_base_prompts_exactly(clip_fp32, images):
    model = build(clip_fp32)
    learner = model.prompt_learner
    with torch.no_grad():
        text_context = model.text_context()[0]
        image_context = model.image_context(images)[0]
        assert torch.equal(learner.vision_prompts(text_context), learner.ctx_vision)
        assert torch.equal(learner.text_prompts(image_context), learner.ctx_text.expand(2, -1, -1, -1))
        base = build(clip_fp32, TGV=False, IGT=False)
        base.prompt_learner.load_state_dict(learner.state_dict(), strict=False)
        torch.testing.assert_close(model(images), base(images), rtol=1e-5, atol=1e-5)


def test_base_prompts_start_from_the_phrase_and_parameter_count(clip_fp32):
    learner = build(clip_fp32).prompt_learner
    phrase = clip_fp32.token_embedding(tokenize("a photo of a"))[0, 1:5]
    assert torch.equal(learner.ctx_text[0], phrase)
    assert learner.ctx_text.shape == (3, 4, 128) and learner.ctx_vision.shape == (3, 4, 128)
    tgv = 128 * 128 * 4 + 128   # q, k, v (no bias), o (+ bias); widths 128, TGV_DIM 128
    igt = 128 * 128 + 128 + 128 * 128 + 128
    assert sum(p.numel() for p in learner.parameters()) == 2 * 3 * 4 * 128 + 3 * (tgv + igt)


def test_context_is_layer_matched_frozen_clip(clip_fp32, images):
    """T^l / V^l: parameter-free LayerNorm of the EOT / CLS stream after block l; anchors are CLIP's."""
    model = build(clip_fp32)
    text_context, zs_text = model.text_context()
    image_context, zs_image = model.image_context(images)
    assert text_context.shape == (3, 3, 128) and image_context.shape == (3, 2, 128)
    tokens = tokenize([f"a photo of a {c}." for c in CLASSNAMES])
    with torch.no_grad():
        x = (clip_fp32.token_embedding(tokens) + clip_fp32.positional_embedding).permute(1, 0, 2)
        x = clip_fp32.transformer.resblocks[0](x)  # block 1 on all 77 tokens (CLIP's own mask)
        expected = F.layer_norm(x[tokens.argmax(-1), torch.arange(3)], (128,))
        torch.testing.assert_close(text_context[0], expected, rtol=1e-4, atol=1e-4)
        reference = clip_fp32.encode_text(tokens)
        torch.testing.assert_close(zs_text, reference / reference.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)
        reference = clip_fp32.encode_image(images)
        torch.testing.assert_close(zs_image, reference / reference.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_truncated_text_equals_the_full_77_tokens(tiny_clip_path, clip_fp32, images):
    model = build(clip_fp32)
    perturb_generators(model)
    with torch.no_grad():
        image_context = model.image_context(images)[0]
        short = model.encode_text(image_context)
        model.truncate = False
        torch.testing.assert_close(model.encode_text(image_context), short, rtol=1e-5, atol=1e-5)
    clip_fp16 = load_clip_to_cpu(tiny_clip_path)
    model = build(clip_fp16, IGT=False)
    with torch.no_grad():
        short = model.encode_text()
        model.truncate = False
        # compared after L2 normalisation (what enters the logits): one fp16 ulp of the tiny
        # CLIP's raw features (~2 in magnitude) is already 2e-3
        full = model.encode_text().float()
        assert short.dtype == torch.float16
        short = short.float()
        assert (full / full.norm(dim=-1, keepdim=True) - short / short.norm(dim=-1, keepdim=True)).abs().max() < 1e-3


def test_image_guidance_makes_text_per_image_and_chunks_agree(clip_fp32, images):
    model = build(clip_fp32, CLASS_CHUNK=2)
    perturb_generators(model)
    with torch.no_grad():
        out = model.predict(images)
        assert out.text_features.shape == (2, 3, 64)
        assert not torch.allclose(out.text_features[0], out.text_features[1], atol=1e-4)
        model.eval()  # test-time chunks of 2 classes
        torch.testing.assert_close(model(images), out.logits, rtol=1e-5, atol=1e-5)


def test_class_list_changes_the_visual_prompts_without_retraining(clip_fp32):
    model = build(clip_fp32)
    perturb_generators(model)
    other = build(clip_fp32, classnames=["ferry", "llama"])
    other.prompt_learner.load_state_dict({k: v for k, v in model.prompt_learner.state_dict().items()
                                          if not k.startswith("token_")}, strict=False)
    with torch.no_grad():
        ours = model.prompt_learner.vision_prompts(model.text_context()[0])
        theirs = other.prompt_learner.vision_prompts(other.text_context()[0])
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs, atol=1e-4)


def test_retention_loss_is_the_hand_computation():
    torch.manual_seed(0)
    text, zs_text = torch.randn(2, 3, 4), torch.randn(3, 4)  # per-image text features (B, C, E)
    image, zs_image = torch.randn(2, 4), torch.randn(2, 4)
    logits, zs_logits = torch.randn(2, 3), torch.randn(2, 3)
    text_l1 = sum((text[b] - zs_text).abs().sum() for b in range(2)) / 24
    image_l1 = (image - zs_image).abs().sum() / 8
    p, p0 = logits.softmax(1), zs_logits.softmax(1)
    kl = (p0 * (p0.log() - p.log())).sum() / 6
    expected = 25 * text_l1 + 10 * image_l1 + 1 * kl
    ours = retention_loss(text, zs_text, image, zs_image, logits, zs_logits, (25.0, 10.0, 1.0))
    torch.testing.assert_close(ours, expected)
    # Instance-agnostic text features (C, E) compare one to one.
    torch.testing.assert_close(retention_loss(text[0], zs_text, image, zs_image, logits, zs_logits, (1.0, 0.0, 0.0)),
                               (text[0] - zs_text).abs().mean())


def test_gradients_reach_every_generator_after_one_step_and_nothing_frozen(clip_fp32, images):
    model = build(clip_fp32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.SGD(trainable, lr=0.1)
    labels = torch.tensor([0, 2])
    model.loss(images, labels)[0].backward()
    optim.step()  # zero-initialised output layers block the earlier layers' gradient at step 0
    optim.zero_grad()
    model.loss(images, labels)[0].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("prompt_learner.") for n in grads)
    assert any(n.startswith("prompt_learner.tgv.") for n in grads) and "prompt_learner.igt.0.0.weight" in grads
    assert not any(t.requires_grad for t in model.text_context())
    assert not any(t.requires_grad for t in model.image_context(images))


def test_retention_fusion_blends_zero_shot_logits(clip_fp32, images):
    model = build(clip_fp32, IGT=False).eval()
    fused = build(clip_fp32, IGT=False, RET_FUSE=0.25).eval()
    fused.prompt_learner.load_state_dict(model.prompt_learner.state_dict())
    with torch.no_grad():
        out = model.predict(images)
        _, zs_image = model.image_context(images)
        zs = model.logit_scale.exp() * zs_image @ out.zs_text_features.t()
        torch.testing.assert_close(fused(images), 0.75 * out.logits + 0.25 * zs)
