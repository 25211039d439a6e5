"""KgCoOp model: the knowledge-guided loss, the frozen hand-crafted features, the config quirks."""
import copy

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401
from engine.clip_loading import load_clip_to_cpu
from engine.config import build_cfg, merge_from_list
from trainers.kgcoop import KgCoOp, KgCoOpModel
from trainers.prompting import tokenize

CLASSNAMES = ["face", "leopard", "motorbike"]


def kgcoop_cfg(dataset="Caltech101", **opts):
    cfg = build_cfg()
    cfg.DATASET.NAME = dataset
    for key, value in opts.items():
        cfg.TRAINER.COOP[key] = value
    return cfg


def test_knowledge_score_on_a_hand_built_case(clip_fp32):
    """t = (e1, e2), hand-crafted w = (e1, e1): cosines (1, 0), squared distances (0, 2)."""
    model = KgCoOpModel(kgcoop_cfg(N_CTX=4), ["a", "b"], clip_fp32)
    model.clip_text_features = torch.tensor([[3.0, 0.0], [0.5, 0.0]])
    text_features = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    assert model.knowledge_score(text_features, "code").item() == pytest.approx(0.5)
    assert model.knowledge_score(text_features, "paper").item() == pytest.approx(1.0)


def test_training_loss_is_ce_plus_w_times_the_score(clip_fp32):
    cfg = kgcoop_cfg(N_CTX=4, W=8.0)
    trainer = KgCoOp.__new__(KgCoOp)  # only compute_loss is exercised: no data, no engine
    trainer.cfg, trainer.model = cfg, KgCoOpModel(cfg, CLASSNAMES, clip_fp32)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    loss, logits = trainer.compute_loss(type("Batch", (), {"images": images, "labels": labels}))

    with torch.no_grad():
        t = trainer.model.encode_text()
        f = clip_fp32.visual(images)
        expected_logits = 100.0 * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()
        w = trainer.model.clip_text_features  # fp16, re-normalised in fp16
        cos = F.cosine_similarity(t / t.norm(dim=-1, keepdim=True), w / w.norm(dim=-1, keepdim=True), dim=1, eps=1e-7)
        expected = F.cross_entropy(expected_logits, labels) + 8.0 * (1 - cos.mean())
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_handcrafted_features_are_fp16_clip_with_the_kgcoop_template(tiny_clip_path, clip_fp32):
    """fp16 (the reference's second CLIP) even when the model runs in fp32, bit-identical to its
    encode_text over all 77 positions; DTD's template is KgCoOp's."""
    model = KgCoOpModel(kgcoop_cfg("DescribableTextures", N_CTX=4), ["banded", "woven"], clip_fp32)
    assert model.clip_text_features.dtype == torch.float16
    assert "clip_text_features" not in model.state_dict()  # recomputed for every class list, never saved
    clip_fp16 = load_clip_to_cpu(tiny_clip_path)
    with torch.no_grad():
        expected = clip_fp16.encode_text(tokenize(["a photo of a banded, a type of texture.",
                                                   "a photo of a woven, a type of texture."]))
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.equal(model.clip_text_features, expected)


def test_phrase_prompt_equal_to_the_template_scores_zero(clip_fp32):
    """Caltech101's template is `a photo of a {}.`: the initial learned prompt is the hand-crafted one."""
    model = KgCoOpModel(kgcoop_cfg(CTX_INIT="a photo of a"), CLASSNAMES, clip_fp32)
    with torch.no_grad():
        assert abs(model.knowledge_score(model.encode_text()).item()) < 1e-3


def test_prompt_is_always_assembled_at_the_end(clip_fp32):
    model = KgCoOpModel(kgcoop_cfg(CTX_INIT="a photo of a", CLASS_TOKEN_POSITION="middle"), CLASSNAMES, clip_fp32)
    expected = clip_fp32.token_embedding(tokenize([f"a photo of a {c}." for c in CLASSNAMES]))
    torch.testing.assert_close(model.prompt_learner(), expected)


def test_only_ctx_gets_gradients(clip_fp32):
    cfg = kgcoop_cfg(N_CTX=4, W=8.0)
    trainer = KgCoOp.__new__(KgCoOp)
    trainer.cfg, trainer.model = cfg, KgCoOpModel(cfg, CLASSNAMES, copy.deepcopy(clip_fp32))
    for name, param in trainer.model.named_parameters():
        param.requires_grad_(name.startswith(KgCoOp.trainable))
    batch = type("Batch", (), {"images": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])})
    trainer.compute_loss(batch)[0].backward()
    grads = {n for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads == {"prompt_learner.ctx"} and trainer.model.prompt_learner.ctx.grad.abs().sum() > 0


def test_random_init_with_csc_is_class_specific(clip_fp32):
    model = KgCoOpModel(kgcoop_cfg(N_CTX=2, CSC=True), CLASSNAMES, clip_fp32)
    assert model.prompt_learner.ctx.shape == (3, 2, 128)


@pytest.mark.parametrize("value, expected", [("True", "a photo of a"), ("False", ""),
                                             ("a photo of a", "a photo of a"), ("", "")])
def test_boolean_ctx_init_of_the_official_command_line(value, expected):
    cfg = build_cfg()
    merge_from_list(cfg, ["TRAINER.COOP.CTX_INIT", value])
    assert cfg.TRAINER.COOP.CTX_INIT == expected


def test_kgcoop_keys_extend_the_coop_node():
    cfg = build_cfg()
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.W, cfg.TRAINER.COOP.ALPHA, cfg.TRAINER.COOP.KG_LOSS) == \
        (16, 1.0, 1.0, "code")
    with pytest.raises(ValueError, match="decimal point"):
        merge_from_list(cfg, ["TRAINER.COOP.W", "8"])  # as in the reference: W is a float
