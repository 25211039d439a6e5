"""DPL (reconstructed): decoupled attention against joint attention, alpha = 0 against CLIP, gradients."""
import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from tests.helpers.models import method_cfg, set_trainable
from trainers.dpl import DPL, DPLModel, condition_prompts, dpl_block, in_projection
from trainers.prompting import causal_mask, run_block, tokenize

CLASSNAMES = ["face", "leopard", "motorbike"]


def dpl_cfg(**keys):
    return method_cfg("DPL", {"DEPTH_V": 2, "DEPTH_T": 2, **keys}, dataset="Caltech101")  # "a photo of a {}."


def build(clip_model, classnames=CLASSNAMES, **keys):
    """A DPLModel with requires_grad set as the engine sets it."""
    return set_trainable(DPLModel(dpl_cfg(**keys), classnames, clip_model), DPL)


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32)


# ---- the decoupled block ------------------------------------------------------------------

def joint_attention_block(block, x, prompts, instance_mask=None):
    """Naive reference: CLIP's block on [P; X], every prompt visible to every instance."""
    m, length = prompts.shape[0], x.shape[0]
    mask = torch.zeros(m + length, m + length)
    if instance_mask is not None:
        mask[m:, m:] = instance_mask
    sequence = torch.cat([prompts.unsqueeze(1).expand(m, x.shape[1], -1), x])
    return run_block(block, sequence, mask)[m:]


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_exact_mix_equals_joint_attention(clip_fp32, tower):
    blocks = clip_fp32.visual.transformer.resblocks if tower == "vision" else clip_fp32.transformer.resblocks
    length = 5 if tower == "vision" else 9
    mask = causal_mask(length, torch.float32, "cpu") if tower == "text" else None
    torch.manual_seed(0)
    for block in blocks:
        x, prompts = torch.randn(length, 4, 128), torch.randn(3, 128)
        with torch.no_grad():
            ours = dpl_block(block, x, prompts, alpha=None, attn_mask=mask)
            torch.testing.assert_close(ours, joint_attention_block(block, x, prompts, mask), rtol=0, atol=1e-4)


def test_constant_gate_mixes_the_two_separate_softmaxes(clip_fp32):
    """alpha per head: out_proj((1 - a) softmax(S_XX) V_X + a softmax(S_XP) V_P), by hand."""
    block = clip_fp32.visual.transformer.resblocks[0]
    x, prompts, alpha = torch.randn(5, 2, 128), torch.randn(3, 128), torch.tensor([0.25, 0.1])
    with torch.no_grad():
        ours = dpl_block(block, x, prompts, alpha=alpha)
        q, k, v = in_projection(block.attn, block.ln_1(x))
        _, kp, vp = in_projection(block.attn, block.ln_1(prompts.unsqueeze(1)))
        i2i = (q @ k.transpose(-1, -2) / 8).softmax(-1) @ v  # head dim 64
        i2p = (q @ kp.transpose(-1, -2) / 8).softmax(-1) @ vp
        mixed = (1 - alpha.view(1, 2, 1, 1)) * i2i + alpha.view(1, 2, 1, 1) * i2p  # (N, h, L, 64)
        h = x + block.attn.out_proj(mixed.permute(2, 0, 1, 3).reshape(5, 2, 128))
        expected = h + block.mlp(block.ln_2(h))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_lctp_prompts_read_only_their_sentence_up_to_eot(clip_fp32):
    """Conditioned prompts = E + out_proj(attention over [E; tokens 0..eot]) per class."""
    block = clip_fp32.transformer.resblocks[0]
    x, prompts, eot = torch.randn(6, 2, 128), torch.randn(3, 1, 128), torch.tensor([3, 5])
    with torch.no_grad():
        _, k, v = in_projection(block.attn, block.ln_1(x))
        ours = condition_prompts(block, prompts, k, v, eot)                      # (M, C, d)
        for c in range(2):
            visible = torch.cat([prompts[:, 0], x[:eot[c] + 1, c]]).unsqueeze(1)  # (M + eot + 1, 1, d)
            h = block.ln_1(visible)
            attended = block.attn(h[:3], h, h, need_weights=False)[0]
            torch.testing.assert_close(ours[:, c:c + 1], prompts + attended, rtol=1e-5, atol=1e-5)
        x_changed = x.clone()
        x_changed[4:, 0] += 1.0  # after class 0's EOT: invisible to its prompts
        _, k2, v2 = in_projection(block.attn, block.ln_1(x_changed))
        torch.testing.assert_close(condition_prompts(block, prompts, k2, v2, eot)[:, 0], ours[:, 0])


def unit(features):
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True)


# ---- the model ----------------------------------------------------------------------------

@pytest.mark.parametrize("lctp", [True, False])
def test_alpha_zero_is_frozen_clip(clip_fp32, images, lctp):
    model = build(clip_fp32, ALPHA_INIT=0.0, ALPHA_LEARN=False, LCTP=lctp, DEPTH_V=3, DEPTH_T=3)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), clip_fp32.encode_image(images), rtol=1e-5, atol=1e-5)
        reference = clip_fp32.encode_text(tokenize([f"a photo of a {c}." for c in CLASSNAMES]))
        torch.testing.assert_close(model.encode_text(), reference, rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_frozen_clip_in_fp16(tiny_clip_path, images):
    """The spec's fp16 tolerance, with CLIP's fp16 weights as loaded (fp16 arithmetic on the CPU).

    Compared after L2 normalisation (what enters the logits): the tiny CLIP's raw features are
    ~2 in magnitude, where one fp16 ulp is already 2e-3.
    """
    clip_fp16 = load_clip_to_cpu(tiny_clip_path)
    model = build(clip_fp16, ALPHA_INIT=0.0, ALPHA_LEARN=False, DEPTH_V=3, DEPTH_T=3)
    with torch.no_grad():
        assert (unit(model.encode_image(images)) - unit(clip_fp16.encode_image(images.half()))).abs().max() < 1e-3
        reference = clip_fp16.encode_text(tokenize([f"a photo of a {c}." for c in CLASSNAMES]))
        assert (unit(model.encode_text()) - unit(reference)).abs().max() < 1e-3


def test_default_gates_start_at_alpha_init_and_prompts_change_the_output(clip_fp32, images):
    model = build(clip_fp32)
    learner = model.prompt_learner
    torch.testing.assert_close(learner.beta_vision, torch.full((2, 2), -1.3863), rtol=0, atol=1e-4)
    torch.testing.assert_close(learner.alpha("text"), torch.full((2, 2), 0.1))
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), clip_fp32.encode_image(images), atol=1e-4)


def test_gradients_reach_exactly_prompts_and_gates(clip_fp32, images):
    model = build(clip_fp32)
    F.cross_entropy(model(images), torch.tensor([0, 1, 2])).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx_vision", "prompt_learner.ctx_text",
                         "prompt_learner.beta_vision", "prompt_learner.beta_text"}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable)
    # 2 layers x 4 tokens x 128 per tower, 2 layers x 2 heads of gates per tower.
    assert sum(model.get_parameter(n).numel() for n in trainable) == 2 * (2 * 4 * 128) + 2 * (2 * 2)


def test_branches_and_coupling_choose_the_learned_tensors(clip_fp32, images):
    vision = build(clip_fp32, BRANCH="vision")
    assert set(vision.prompt_learner.state_dict()) == {"ctx_vision", "beta_vision"}
    assert vision.frozen_image_encoder is False
    text = build(clip_fp32, BRANCH="text", MIX="exact")
    assert set(text.prompt_learner.state_dict()) == {"ctx_text"}
    with torch.no_grad():
        torch.testing.assert_close(text.encode_image(images), clip_fp32.encode_image(images))
    coupled = build(clip_fp32, COUPLE="linear")
    assert "ctx_vision" not in coupled.prompt_learner.state_dict()
    assert coupled.prompt_learner.vision_prompts().shape == (2, 4, 128)
    F.cross_entropy(coupled(images), torch.tensor([0, 1, 2])).backward()
    assert coupled.prompt_learner.couple[0].weight.grad.abs().sum() > 0


def test_class_list_changes_only_the_conditioned_prompts(clip_fp32):
    """LCTP prompts come from each class's own sentence: new classes need no retraining."""
    trained = build(clip_fp32)
    other = build(clip_fp32, classnames=["face", "ferry"])
    other.prompt_learner.load_state_dict(trained.prompt_learner.state_dict())  # strict: same tensors
    with torch.no_grad():
        base, new = trained.encode_text(), other.encode_text()
    torch.testing.assert_close(new[0], base[0])                 # "face" is conditioned on its own sentence
    assert not torch.allclose(new[1], base[1], atol=1e-4)


def test_cached_and_uncached_logits_agree(clip_fp32, images):
    model = build(clip_fp32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images, text_features=model.encode_text()))


@pytest.mark.parametrize("opts, message", [
    ({"MIX": "joint"}, "MIX must be one of const, exact"),
    ({"DEPTH_V": 4}, "DEPTH_V must be between 1 and the number of layers \\(3\\)"),
    ({"ALPHA_INIT": 0.0}, "saturates the gate"),
    ({"COUPLE": "linear", "BRANCH": "vision"}, "COUPLE linear needs BRANCH both"),
    ({"COUPLE": "linear", "BRANCH": "text"}, "COUPLE linear needs BRANCH both"),
])
def test_bad_options_fail_clearly(clip_fp32, opts, message):
    with pytest.raises(ValueError, match=message):
        build(clip_fp32, **opts)
