"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023, arXiv 2210.03117).

Unlike CoOp, prompts enter both towers and at several depths: N_CTX learned language tokens
after SOT, a linear coupling (`proj`) that turns them into vision tokens appended after the
patches, and fresh coupled text/vision prompts that replace those tokens at the input of
blocks 1..PROMPT_DEPTH-1. Details: docs/methods/maple.md. Deviations: README "Differences".
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.trainer import CheckpointMismatch, TrainerBase
from trainers.deep_prompting import DeepPromptedVisionEncoder, check_prompt_depth, tower_sizes
from trainers.prompting import PromptedCLIP, assemble_prompts, build_class_prompts, init_context

LEARNER = "prompt_learner."  # key prefix of the prompt learner's tensors


def add_maple_config(cfg):
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2                  # learned language tokens per layer
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # first N_CTX tokens become ctx (if N_CTX <= 4)
    cfg.TRAINER.MAPLE.PREC = "fp16"              # fp16 | fp32 | amp | bf16
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9           # J: prompted layers incl. the input (1 = shallow)


class MaPLePromptLearner(nn.Module):
    """Language prompts per layer and the linear couplings that make the vision prompts."""

    def __init__(self, maple_cfg, classnames, clip_model):
        super().__init__()
        sizes = tower_sizes(clip_model)
        depth = maple_cfg.PROMPT_DEPTH
        check_prompt_depth("TRAINER.MAPLE.PROMPT_DEPTH", depth, min(sizes.text_layers, sizes.vision_layers))
        dtype = clip_model.dtype
        print("MaPLe design: Multi-modal Prompt Learning")
        # Reference RNG order: [random ctx fill], proj, deep text prompts in index
        # order, then one projection layer that is deep-copied (drawn even when depth is 1).
        init = init_context(clip_model, maple_cfg.N_CTX, maple_cfg.CTX_INIT, phrase_sets_length=False)
        # Reference behaviour: `proj` is drawn in fp32 and cast (`.half()` there; the model dtype
        # here, so fp32 and bf16 runs work); the deep tensors stay fp32 in every precision.
        self.proj = nn.Linear(sizes.text_width, sizes.vision_width).type(dtype)
        self.ctx = nn.Parameter(init.ctx)  # (n_ctx, text_width), model dtype
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(init.n_ctx, sizes.text_width)) for _ in range(depth - 1)])
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=0.02)
        # Reference behaviour: all deep couplings start identical.
        coupling = nn.Linear(sizes.text_width, sizes.vision_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])

        prompts = build_class_prompts(clip_model, classnames, init.prompt_prefix, init.n_ctx)
        self.register_buffer("token_prefix", prompts.token_prefix)  # SOT: (n_cls, 1, text_width)
        self.register_buffer("token_suffix", prompts.token_suffix)  # rest of the phrase, name, '.', EOT, padding
        self.tokenized_prompts = prompts.tokenized                    # (n_cls, 77)

    def text_prompts(self):
        """Class prompts (n_cls, 77, text_width) and the deep text prompts [(n_ctx, text_width)]."""
        return assemble_prompts(self.ctx, self.token_prefix, self.token_suffix), list(self.compound_prompts_text)

    def vision_prompts(self):
        """Layer-0 vision prompt (n_ctx, vision_width) and the deep ones, coupled to the text prompts."""
        deep = [layer(prompt) for layer, prompt in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.proj(self.ctx), deep


class MaPLeModel(PromptedCLIP):
    """Frozen CLIP whose two towers run with MaPLe's per-layer prompts."""

    frozen_image_encoder = False

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = MaPLePromptLearner(cfg.TRAINER.MAPLE, classnames, clip_model)
        self.image_encoder = DeepPromptedVisionEncoder(clip_model.visual)

    def encode_text(self):
        # The text side does not depend on the image: the engine calls this once per evaluation.
        prompts, deep_prompts = self.prompt_learner.text_prompts()
        return self.text_encoder(prompts, self.prompt_learner.tokenized_prompts, deep_prompts)

    def encode_image(self, images):
        first_layer_prompt, deep_prompts = self.prompt_learner.vision_prompts()
        return self.image_encoder(images.type(self.dtype), first_layer_prompt, deep_prompts)


@TRAINERS.register("MaPLe", config=add_maple_config)
class MaPLe(TrainerBase):
    """Trains every `prompt_learner` tensor; checkpoints keep the official whole-model key names."""

    config_node = "MAPLE"
    checkpoint_name = "MultiModalPromptLearner"
    trainable = ("prompt_learner.",)

    def build_model(self, clip_model, classnames):
        return MaPLeModel(self.cfg, classnames, clip_model)

    def compute_loss(self, batch):
        logits = self.model(batch.images)
        return F.cross_entropy(logits, batch.labels), None  # the reference logs only the loss

    def checkpoint_module(self):
        return self.model  # the official registered model is the whole CustomCLIP

    def checkpoint_state_dict(self):
        """Only the prompt learner (its trainable tensors and token buffers), official key names."""
        return {k: v for k, v in self.model.state_dict().items() if k.startswith(LEARNER)}

    def load_checkpoint_state_dict(self, state_dict):
        """Load `prompt_learner.*`; the frozen CLIP weights of official whole-model files are not
        loaded (the configured backbone is kept) but compared with ours, and a mismatch is reported."""
        learner = {k: v for k, v in state_dict.items() if k.startswith(LEARNER)}
        if not learner:
            raise CheckpointMismatch(f"it has no '{LEARNER}*' keys, so it is not a MaPLe checkpoint")
        self.report_frozen_mismatch({k: v for k, v in state_dict.items() if not k.startswith(LEARNER)})
        super().load_checkpoint_state_dict(learner)
