"""Shared-prefix text encoding gives the plain encoder's results, for every registered trainer.

The prompted text encoders run a prefix shared by all class prompts ([SOT] + context, per image
for image-guided prompts) once and only the class positions per class. Logits, cached text
features and gradients must equal the plain path's to float rounding, in training and in
evaluation; the test is parametrised over the trainer registry, so trainers registered later are
covered without edits.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers every trainer)
import trainers.prompting
from engine.clip_loading import load_clip_to_cpu
from engine.config import build_cfg
from engine.precision import resolve_precision
from engine.registry import TRAINERS
from tests.helpers.registered import unique_trainers
from tests.helpers.tiny_clip import TINY_CLIP
from trainers.coop import CoOpModel
from trainers.maple import MaPLeModel
from trainers.promptkd import PromptKD
from trainers.prompting import (PromptedTextEncoder, SharedPrefix, assemble_prompts, build_class_prompts,
                                use_shared_prefix)

CLASSNAMES = ["face", "great_white_shark", "2000 AM General Hummer SUV", "leopard", "motorbike"]
TINY_LAYERS = TINY_CLIP["transformer_layers"]
# Trainers whose text prompts have a shared prefix: the fast path must actually run for them.
SHARES_PREFIX = {"CoOp", "KgCoOp", "MaPLe", "DGPrompt", "IVLP", "PromptSRC", "PromptKD", "DPC_CoOp", "DPC_KgCoOp",
                 "DPC_MaPLe", "DPC_DGPrompt", "DPC_IVLP", "DPC_PromptSRC", "DPC_PromptKD"}


def build_trainer(name, clip_model, request):
    """A trainer with its model (on a copy of `clip_model`) and requires_grad flags as the engine sets them.

    `__init__` does not run: its data loaders (and DPC's stage-1 lookup) do not touch the text path.
    Method defaults in fp32, with prompt depths capped at the tiny CLIP's 3 blocks.
    """
    trainer = object.__new__(TRAINERS.get(name))
    trainer.cfg = cfg = build_cfg()
    cfg.TRAINER.NAME, cfg.DATASET.NAME = name, "Caltech101"
    cfg.INPUT.SIZE = (32, 32)
    if "PROMPTKD" in cfg.TRAINER and trainer.config_node == "PROMPTKD":  # PromptKD's teacher (tests/conftest.py)
        cfg.TRAINER.PROMPTKD.TEACHER_NAME = request.getfixturevalue("promptkd_clips")[1]
        cfg.TRAINER.PROMPTKD.TEACHER_CKPT = request.getfixturevalue("promptkd_teacher")
    method_cfg = cfg.TRAINER[trainer.config_node]
    method_cfg.PREC = "fp32"
    for key, value in method_cfg.items():
        if "DEPTH" in key and isinstance(value, int):
            method_cfg[key] = min(value, TINY_LAYERS)
    trainer.device = torch.device("cpu")
    trainer.precision = resolve_precision("fp32", trainer.device)
    if isinstance(trainer, PromptKD):  # what its __init__ sets besides the model
        trainer.eval_classes = slice(None)
    trainer.model = trainer.build_model(copy.deepcopy(clip_model), CLASSNAMES)
    for param_name, param in trainer.model.named_parameters():
        param.requires_grad_(trainer.is_trainable(param_name))
    torch.manual_seed(0)  # generators that start at zero output would hide their inputs: perturb every one
    with torch.no_grad():
        for param in trainer.model.parameters():
            if param.requires_grad and not param.any():
                param.normal_(std=0.05)
    return trainer


def count_shared_blocks(monkeypatch):
    """A list that grows by one per block run on the shared-prefix path."""
    calls = []

    def counted(*args):
        calls.append(1)
        return run_block_after_prefix(*args)

    run_block_after_prefix = trainers.prompting.run_block_after_prefix
    monkeypatch.setattr(trainers.prompting, "run_block_after_prefix", counted)
    return calls


def train_and_eval(trainer, images, share):
    """Training-mode logits and trainable gradients, then evaluation-mode cached features and logits."""
    model = use_shared_prefix(trainer.model, share)
    trainer.teacher_text = None  # PromptKD's cached class vectors: computed again on this path
    model.train()
    model.zero_grad()
    logits = model(images)
    if logits.requires_grad:  # something to train
        (logits.float() * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        text_features = trainer.cached_text_features()
        eval_logits = trainer.model_inference(images, text_features)
    return logits.detach(), grads, text_features, eval_logits


@pytest.mark.parametrize("name", unique_trainers())
def test_shared_prefix_equals_the_plain_encoder(name, clip_fp32, monkeypatch, request):
    trainer = build_trainer(name, clip_fp32, request)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = count_shared_blocks(monkeypatch)
    state = copy.deepcopy(trainer.model.state_dict())
    shared = train_and_eval(trainer, images, share=True)
    trainer.model.load_state_dict(state)  # a training forward moves BatchNorm statistics (PromptKD's projector)
    used_shared_path = bool(calls)
    calls.clear()
    plain = train_and_eval(trainer, images, share=False)
    assert not calls
    if name in SHARES_PREFIX:
        assert used_shared_path, f"{name}: the shared-prefix path did not run"

    (logits, grads, features, eval_logits), (plain_logits, plain_grads, plain_features, plain_eval) = shared, plain
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(eval_logits, plain_eval, rtol=1e-5, atol=1e-4)
    if plain_features is not None:
        torch.testing.assert_close(features, plain_features, rtol=1e-5, atol=1e-5 * plain_features.abs().max().item())
    assert grads.keys() == plain_grads.keys()
    # absolute tolerance on the largest gradient's scale: some are zero up to rounding (a bias before BatchNorm)
    scale = max(grad.abs().max().item() for grad in plain_grads.values()) if plain_grads else 0.0
    for key, grad in plain_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-4, atol=1e-5 * scale, msg=key)


# ---- fp16: the reference's mixed-precision CLIP, encoder called directly ---------------------------

@pytest.mark.parametrize("build", [CoOpModel, MaPLeModel], ids=["CoOp", "MaPLe"])
def test_fp16_features_agree_to_a_few_ulps(tiny_clip_path, build):
    clip_fp16 = load_clip_to_cpu(tiny_clip_path)
    cfg = build_cfg()
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 3
    torch.manual_seed(0)
    model = build(cfg, CLASSNAMES, clip_fp16)
    with torch.no_grad():
        shared = F.normalize(use_shared_prefix(model, True).encode_text().float(), dim=-1)
        plain = F.normalize(use_shared_prefix(model, False).encode_text().float(), dim=-1)
    # fp16 rounding of the largest feature values; the plain path is itself this far from fp32
    ulp = torch.finfo(torch.float16).eps * plain.abs().max()
    assert (shared - plain).abs().max() <= 4 * ulp


def test_bf16_autocast_features_agree_to_a_few_ulps(clip_fp32):
    """PREC bf16 (fp32 weights, bfloat16 autocast; CPU autocast here, CUDA's in a GPU run)."""
    torch.manual_seed(0)
    model = CoOpModel(build_cfg(), CLASSNAMES, clip_fp32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        shared = F.normalize(use_shared_prefix(model, True).encode_text().float(), dim=-1)
        plain = F.normalize(use_shared_prefix(model, False).encode_text().float(), dim=-1)
    assert (shared - plain).abs().max() <= 4 * torch.finfo(torch.bfloat16).eps * plain.abs().max()


# ---- which prompts share a prefix ----------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip_to_cpu(tiny_clip_path).float()


def test_end_position_with_shared_context_marks_sot_context_and_common_words(clip_model):
    pieces = build_class_prompts(clip_model, CLASSNAMES, "a photo of a", 2)  # "of a" are frozen words
    prompts = assemble_prompts(torch.randn(2, 128), pieces.token_prefix, pieces.token_suffix)
    assert prompts.shared_prefix == SharedPrefix(1 + 2 + 2)


@pytest.mark.parametrize("position,ctx_shape", [("middle", (4, 128)), ("front", (4, 128)), ("end", (5, 4, 128))])
def test_class_dependent_prefixes_are_not_marked(clip_model, position, ctx_shape):
    """Class name in front or middle, or class-specific context: the plain path runs."""
    pieces = build_class_prompts(clip_model, CLASSNAMES, "X X X X", 4)
    prompts = assemble_prompts(torch.randn(*ctx_shape), pieces.token_prefix, pieces.token_suffix, pieces.name_lens,
                               position)
    assert not hasattr(prompts, "shared_prefix")


@pytest.mark.parametrize("truncate", [True, False])
def test_per_group_prefix_with_deep_prompts(clip_model, truncate, monkeypatch):
    """Two groups (e.g. images) of classes, each with its own context and per-sequence deep prompts."""
    pieces = build_class_prompts(clip_model, CLASSNAMES, "X X", 2)
    contexts, deep = torch.randn(2, 2, 128), torch.randn(2, 2, 128)  # (groups, tokens, width)
    n_cls = len(CLASSNAMES)

    def per_sequence(t):
        return t.unsqueeze(1).expand(-1, n_cls, -1, -1).reshape(2 * n_cls, *t.shape[1:])

    prompts = torch.cat([assemble_prompts(ctx, pieces.token_prefix, pieces.token_suffix) for ctx in contexts])
    tokens = pieces.tokenized.repeat(2, 1)
    deep_per_sequence = [None, per_sequence(deep)]  # block 1 keeps its input, block 2 gets new tokens
    encoder = PromptedTextEncoder(clip_model)
    calls = count_shared_blocks(monkeypatch)
    with torch.no_grad():
        plain = encoder(prompts, tokens, deep_per_sequence, truncate=truncate)
        assert not calls  # concatenating two groups drops the mark
        unmarked_deep = encoder(trainers.prompting.mark_shared_prefix(prompts, 3, groups=2), tokens,
                                deep_per_sequence, truncate=truncate)
        assert not calls  # a per-sequence deep prompt must be marked too
        deep_per_sequence[1] = trainers.prompting.mark_shared_prefix(deep_per_sequence[1], 2, groups=2)
        shared = encoder(prompts, tokens, deep_per_sequence, truncate=truncate)
    assert calls
    torch.testing.assert_close(unmarked_deep, plain)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_switch_and_single_sequences_take_the_plain_path(clip_model, monkeypatch):
    pieces = build_class_prompts(clip_model, CLASSNAMES, "X X", 2)
    encoder = PromptedTextEncoder(clip_model)
    calls = count_shared_blocks(monkeypatch)
    with torch.no_grad():
        encoder(assemble_prompts(torch.randn(2, 128), pieces.token_prefix[:1], pieces.token_suffix[:1]),
                pieces.tokenized[:1])
        encoder.share_prefix = False
        encoder(assemble_prompts(torch.randn(2, 128), pieces.token_prefix, pieces.token_suffix), pieces.tokenized)
    assert not calls
