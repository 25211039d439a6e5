"""IVLP: Independent Vision-Language Prompting (the base of PromptSRC; Khattak et al., ICCV 2023,
arXiv 2307.06948).

Unlike MaPLe, the two towers are prompted independently: N_CTX_TEXT learned tokens after SOT
plus a fresh text prompt at the input of text blocks 1..PROMPT_DEPTH_TEXT-1, and N_CTX_VISION
learned tokens appended after the patches plus a fresh vision prompt at the input of vision
blocks 1..PROMPT_DEPTH_VISION-1. No coupling, cross-entropy only. PromptSRC (promptsrc.py) and
PromptKD's teacher (promptkd.py) reuse this model. Deviations: README "Differences".

The deep prompts are parameters named `VPT_shallow` on CLIP's own residual blocks and the first
vision prompt is `image_encoder.VPT`, so the state-dict keys are the official ones
(`text_encoder.transformer.resblocks.3.VPT_shallow`, ...) without forking CLIP's model code.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.errors import ConfigError
from engine.trainer import CheckpointMismatch, TrainerBase
from trainers.deep_prompting import DeepPromptedVisionEncoder, tower_sizes
from trainers.prompting import PromptedCLIP, assemble_prompts, build_class_prompts, init_context

# Trainable tensors: the first text context and every tensor whose name holds `VPT`.
TEXT_CTX = "prompt_learner.ctx"
PROMPT_MARK = "VPT"


def add_ivlp_keys(node, n_ctx):
    """The keys `IVLPModel` reads, on a method's own config node (IVLP's, PromptSRC's), with `n_ctx`
    text and vision prompt tokens by default."""
    node.N_CTX_VISION = n_ctx            # vision prompt tokens per prompted layer
    node.N_CTX_TEXT = n_ctx              # text prompt tokens per prompted layer
    node.CTX_INIT = "a photo of a"       # first N_CTX_TEXT tokens become ctx (if N_CTX_TEXT <= 4)
    node.PREC = "fp16"                   # fp16 | fp32 | amp | bf16
    node.PROMPT_DEPTH_VISION = 9         # prompted vision layers incl. the input (0 = no vision prompt)
    node.PROMPT_DEPTH_TEXT = 9           # prompted text layers incl. the input (>= 1)


def add_ivlp_config(cfg):
    cfg.TRAINER.IVLP = CN()
    # Reference behaviour: train.py defaults to 2+2 tokens while the shipped config sets 4+4.
    add_ivlp_keys(cfg.TRAINER.IVLP, n_ctx=2)


def is_ivlp_trainable(name):
    """The official selection rule: the text context and every `VPT` tensor; nothing else."""
    return name == TEXT_CTX or PROMPT_MARK in name


def add_deep_prompts(blocks, depth, n_ctx, width):
    """Give blocks 1..depth-1 a fresh N(0, 0.02^2) fp32 `VPT_shallow` (n_ctx, width), in block order."""
    for block in list(blocks)[1:depth]:
        block.VPT_shallow = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.normal_(block.VPT_shallow, std=0.02)


def add_vision_prompts(image_encoder, n_ctx, depth):
    """The first vision prompt `image_encoder.VPT` and the deep ones, N(0, 0.02^2) fp32; returns the
    number of vision prompt tokens (0 when depth is 0: no vision prompt at all)."""
    if depth <= 0:
        return 0
    width = image_encoder.ln_pre.weight.shape[0]
    image_encoder.VPT = nn.Parameter(torch.empty(n_ctx, width))
    nn.init.normal_(image_encoder.VPT, std=0.02)
    add_deep_prompts(image_encoder.transformer.resblocks, depth, n_ctx, width)
    return n_ctx


def encode_prompted_image(image_encoder, images):
    """The image tower with its vision prompts, if it has any."""
    if not hasattr(image_encoder, "VPT"):
        return image_encoder(images)
    return image_encoder(images, image_encoder.VPT, deep_prompts_of(image_encoder.transformer.resblocks))


def deep_prompts_of(blocks):
    """The `VPT_shallow` of blocks 1.., up to the last prompted block (prompt i enters block i + 1)."""
    prompts = [getattr(block, "VPT_shallow", None) for block in list(blocks)[1:]]
    while prompts and prompts[-1] is None:
        prompts.pop()
    return prompts


class IVLPPromptLearner(nn.Module):
    """The layer-0 text context and the frozen class-name tokens around it."""

    def __init__(self, n_ctx, ctx_init, classnames, clip_model):
        super().__init__()
        init = init_context(clip_model, n_ctx, ctx_init, phrase_sets_length=False)
        self.ctx = nn.Parameter(init.ctx)  # (n_ctx, text_width), model dtype
        self.n_ctx = init.n_ctx
        prompts = build_class_prompts(clip_model, classnames, init.prompt_prefix, init.n_ctx)
        self.register_buffer("token_prefix", prompts.token_prefix)  # SOT: (n_cls, 1, text_width)
        self.register_buffer("token_suffix", prompts.token_suffix)  # rest of the phrase, name, '.', EOT, padding
        self.tokenized_prompts = prompts.tokenized                    # (n_cls, 77)

    def forward(self):
        """Class prompts (n_cls, 77, text_width) with the learned context after SOT."""
        return assemble_prompts(self.ctx, self.token_prefix, self.token_suffix)


class IVLPModel(PromptedCLIP):
    """Frozen CLIP whose towers each carry their own deep prompts.

    Args:
        ivlp_cfg: a config node with the IVLP keys (N_CTX_TEXT, N_CTX_VISION, CTX_INIT,
            PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION); PromptSRC and PromptKD pass their own nodes.
    """

    frozen_image_encoder = False

    def __init__(self, ivlp_cfg, classnames, clip_model):
        super().__init__(clip_model)
        sizes = tower_sizes(clip_model)
        if ivlp_cfg.PROMPT_DEPTH_TEXT < 1:
            raise ConfigError(f"PROMPT_DEPTH_TEXT must be >= 1 (1 = the first layer's context only), "
                             f"got {ivlp_cfg.PROMPT_DEPTH_TEXT}")
        if ivlp_cfg.PROMPT_DEPTH_VISION < 0:
            raise ConfigError(f"PROMPT_DEPTH_VISION must be >= 0 (0 = no vision prompt), "
                              f"got {ivlp_cfg.PROMPT_DEPTH_VISION}")
        print("Independent V-L design")
        self.image_encoder = DeepPromptedVisionEncoder(clip_model.visual)
        # Reference RNG order, as far as a plain CLIP build allows: the vision prompts (first, then per
        # block), the text prompts per block, then a random context fill. The reference draws the
        # block prompts while building CLIP, interleaved with CLIP's own init (README "Differences").
        self.n_ctx_vision = add_vision_prompts(self.image_encoder, ivlp_cfg.N_CTX_VISION, ivlp_cfg.PROMPT_DEPTH_VISION)
        add_deep_prompts(self.text_encoder.transformer.resblocks, ivlp_cfg.PROMPT_DEPTH_TEXT, ivlp_cfg.N_CTX_TEXT,
                         sizes.text_width)
        self.prompt_learner = IVLPPromptLearner(ivlp_cfg.N_CTX_TEXT, ivlp_cfg.CTX_INIT, classnames, clip_model)
        print(f"Number of context words (tokens) for Language prompting: {ivlp_cfg.N_CTX_TEXT}")
        print(f"Number of context words (tokens) for Vision prompting: {self.n_ctx_vision}")

    def encode_text(self):
        # The text side does not depend on the image: the engine calls this once per evaluation.
        deep = deep_prompts_of(self.text_encoder.transformer.resblocks)
        return self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized_prompts, deep)

    def encode_image(self, images):
        return encode_prompted_image(self.image_encoder, images.type(self.dtype))


@TRAINERS.register("IVLP", config=add_ivlp_config)
class IVLP(TrainerBase):
    """Trains the text context and every `VPT` prompt with cross-entropy.

    Checkpoints (folder `VLPromptLearner`, as the official trainer) hold the trainable tensors
    under the official whole-model key names; official whole-model files load too.
    """

    config_node = "IVLP"
    checkpoint_name = "VLPromptLearner"

    def is_trainable(self, name):
        return is_ivlp_trainable(name)

    def build_model(self, clip_model, classnames):
        return IVLPModel(self.cfg.TRAINER.IVLP, classnames, clip_model)

    def compute_loss(self, batch):
        # Reference behaviour: the training forward returns the loss only (no accuracy is logged).
        return F.cross_entropy(self.model(batch.images), batch.labels), None

    def checkpoint_module(self):
        return self.model  # the official registered model is the whole CustomCLIP

    def checkpoint_state_dict(self):
        """The trainable tensors, official key names (the frozen CLIP comes from the backbone)."""
        return {k: v for k, v in self.model.state_dict().items() if is_ivlp_trainable(k)}

    def load_checkpoint_state_dict(self, state_dict):
        """Load the trainable tensors; the frozen CLIP weights of an official whole-model file are
        compared with the configured backbone and a mismatch is reported (as for MaPLe)."""
        self.load_prompt_tensors(state_dict)
        self.report_frozen_mismatch({k: v for k, v in state_dict.items()
                                     if not is_ivlp_trainable(k) and not k.startswith("prompt_learner.token_")})

    def load_prompt_tensors(self, state_dict):
        """Load the trainable tensors of `state_dict`; every one this model has must be there."""
        prompts = {k: v for k, v in state_dict.items() if is_ivlp_trainable(k)}
        missing = [k for k, p in self.model.named_parameters() if is_ivlp_trainable(k) and k not in prompts]
        if missing:
            raise CheckpointMismatch(f"it lacks the prompt tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}: "
                                     "it was written by another method or with other PROMPT_DEPTH_* / N_CTX_* settings")
        TrainerBase.load_checkpoint_state_dict(self, prompts)
