"""DPL (reconstructed): Decoupled Prompt Learning for Vision-Language Models.

Xu et al., arXiv 2308.10061 (2023). No code or full text is public: this is the labelled
reconstruction described in docs/methods/dpl.md, reported as "DPL (reconstructed)".

Prompted attention splits exactly into four sub-processes (instance/prompt queries over
instance/prompt keys, each with its own softmax). DPL keeps instance-to-instance as CLIP's
frozen attention, gives instance-to-prompt its own softmax, and replaces joint attention's
input-dependent mixing weight by a learned per-layer, per-head gate alpha <= ALPHA_MAX.
Prompts are never sequence positions, so the instance stream is CLIP's own and alpha = 0 is
zero-shot CLIP. Text prompts are language-conditioned (LCTP): at each prompted layer they
first read their class's hand-crafted sentence, then the sentence reads them. MIX=exact
uses joint attention's own weight instead of alpha (equal to ordinary attention over
[prompts; tokens]). Loss: cross-entropy only. `DPC_DPL` (trainers/dpc.py) puts DPC on top.
Deviations: README "Differences from the official code".
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.errors import ConfigError
from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.deep_prompting import DeepPromptedVisionEncoder, check_prompt_depth, tower_sizes
from trainers.prompting import PromptedCLIP, eot_indices, run_block
from trainers.templates import template_for, template_prompts

NAME = "DPL (reconstructed)"


def add_dpl_config(cfg):
    cfg.TRAINER.DPL = CN()
    cfg.TRAINER.DPL.N_CTX_V = 4          # vision prompt tokens per layer
    cfg.TRAINER.DPL.N_CTX_T = 4          # text prompt tokens per layer
    cfg.TRAINER.DPL.DEPTH_V = 9          # J_v: vision blocks 1..J_v use decoupled attention
    cfg.TRAINER.DPL.DEPTH_T = 9          # J_t: text blocks 1..J_t use decoupled attention
    cfg.TRAINER.DPL.MIX = "const"        # const: learned gate alpha | exact: joint attention's weight
    cfg.TRAINER.DPL.ALPHA_INIT = 0.1     # initial alpha (0 with ALPHA_LEARN False = zero-shot CLIP)
    cfg.TRAINER.DPL.ALPHA_MAX = 0.5      # alpha = ALPHA_MAX * sigmoid(beta)
    cfg.TRAINER.DPL.ALPHA_LEARN = True   # learn beta (per layer and head); False keeps alpha fixed
    cfg.TRAINER.DPL.LCTP = True          # language-conditioned text prompts
    cfg.TRAINER.DPL.BRANCH = "both"      # both | vision | text: the prompted tower(s)
    cfg.TRAINER.DPL.COUPLE = "none"      # none | linear: vision prompts = Linear_l(text prompts)
    cfg.TRAINER.DPL.PREC = "fp16"        # fp16 | fp32 | amp | bf16


_CHOICES = {"MIX": ("const", "exact"), "BRANCH": ("both", "vision", "text"), "COUPLE": ("none", "linear")}


def split_heads(x, n_heads):
    """(L, N, d) -> (N, h, L, d/h)."""
    length, n, width = x.shape
    return x.reshape(length, n, n_heads, width // n_heads).permute(1, 2, 0, 3)


def merge_heads(x):
    """(N, h, L, d/h) -> (L, N, d)."""
    n, n_heads, length, head_dim = x.shape
    return x.permute(2, 0, 1, 3).reshape(length, n, n_heads * head_dim)


def in_projection(attn, x):
    """Queries, keys and values of `x` (L, N, d) with a block's frozen in-projection, each (N, h, L, d/h)."""
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return [split_heads(t, attn.num_heads) for t in (q, k, v)]


def _softmax_attention(q, k, v, mask=None):
    """Attention with fp32 scores and softmax; returns the output and the log-sum-exp per query."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)                 # (N, h, L, 1)
    return (scores - lse).exp().type(v.dtype) @ v, lse


def decoupled_attention(q, k, v, prompt_k, prompt_v, alpha=None, attn_mask=None):
    """Instance outputs (N, h, L, d/h): (1 - w) * I2I + w * I2P.

    q, k, v: the instances' (N, h, L, d/h); prompt_k, prompt_v: (N, h, M, d/h).
    alpha: (h,) learned gate per head; None = the exact weight of joint attention over
    [prompts; instances], w_i = sigmoid(LSE_j S_XP[i, j] - LSE_j S_XX[i, j]).
    attn_mask: additive mask among instances (text: causal); every prompt is visible.
    """
    if alpha is None:
        i2i, lse_instances = _softmax_attention(q, k, v, attn_mask)
        i2p, lse_prompts = _softmax_attention(q, prompt_k, prompt_v)
        weight = torch.sigmoid(lse_prompts - lse_instances).type(v.dtype)   # (N, h, L, 1)
    else:
        # SDPA's fused CUDA kernels run the softmax in fp32 for fp16/bf16 inputs.
        i2i = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        i2p = F.scaled_dot_product_attention(q, prompt_k, prompt_v)
        weight = alpha.type(v.dtype).view(1, -1, 1, 1)
    return i2i + weight * (i2p - i2i)


def condition_prompts(block, prompts, k, v, eot):
    """LCTP: each class's prompts read [prompts; its sentence up to EOT], non-causally.

    prompts: (M, 1, d) layer prompts; k, v: the sentence tokens' (C, h, L, d/h); eot: (C,).
    Returns the language-conditioned prompts (M, C, d).
    """
    n_cls, length = k.shape[0], k.shape[2]
    prompt_q, prompt_k, prompt_v = (t.expand(n_cls, -1, -1, -1)
                                    for t in in_projection(block.attn, block.ln_1(prompts)))  # (C, h, M, d/h)
    keys, values = torch.cat([prompt_k, k], dim=2), torch.cat([prompt_v, v], dim=2)     # (C, h, M + L, d/h)
    visible = torch.arange(length, device=k.device) <= eot.view(-1, 1)                    # (C, L)
    visible = torch.cat([visible.new_ones(n_cls, prompts.shape[0]), visible], dim=1)      # (C, M + L)
    out = F.scaled_dot_product_attention(prompt_q, keys, values, attn_mask=visible[:, None, None, :])
    return prompts + block.attn.out_proj(merge_heads(out))


def dpl_block(block, x, prompts, alpha=None, attn_mask=None, eot=None):
    """One of CLIP's own blocks with decoupled attention for the instance tokens.

    x: (L, N, d) instance stream; prompts: (M, d) this layer's prompts (never part of the
    stream, no positional embedding); alpha: (h,) gate or None for MIX=exact; attn_mask:
    the instances' mask (text: causal); eot: (N,) EOT positions to condition the prompts on
    each sentence (LCTP), None for plain prompts.
    """
    h = block.ln_1(x)
    q, k, v = in_projection(block.attn, h)                                                 # (N, h, L, d/h)
    prompts = prompts.type(x.dtype).unsqueeze(1)                                           # (M, 1, d)
    if eot is not None:
        prompts = condition_prompts(block, prompts, k, v, eot)                             # (M, N, d)
    _, prompt_k, prompt_v = in_projection(block.attn, block.ln_1(prompts))
    n = x.shape[1]
    out = decoupled_attention(q, k, v, prompt_k.expand(n, -1, -1, -1), prompt_v.expand(n, -1, -1, -1),
                              alpha, attn_mask)
    x = x + block.attn.out_proj(merge_heads(out))
    return x + block.mlp(block.ln_2(x))


class DPLPromptLearner(nn.Module):
    """Per-layer prompts E^l of both towers and the per-layer, per-head gates beta."""

    def __init__(self, dpl_cfg, clip_model):
        super().__init__()
        for key, choices in _CHOICES.items():
            if dpl_cfg[key] not in choices:
                raise ConfigError(f"TRAINER.DPL.{key} must be one of {', '.join(choices)}, got {dpl_cfg[key]!r}")
        sizes = tower_sizes(clip_model)
        self.vision = dpl_cfg.BRANCH in ("both", "vision")
        self.text = dpl_cfg.BRANCH in ("both", "text")
        self.exact = dpl_cfg.MIX == "exact"
        self.alpha_max = dpl_cfg.ALPHA_MAX
        if self.vision:
            check_prompt_depth("TRAINER.DPL.DEPTH_V", dpl_cfg.DEPTH_V, sizes.vision_layers)
        if self.text:
            check_prompt_depth("TRAINER.DPL.DEPTH_T", dpl_cfg.DEPTH_T, sizes.text_layers)
        if not self.exact:
            check_alpha(dpl_cfg)
        if dpl_cfg.COUPLE == "linear" and (dpl_cfg.BRANCH != "both" or dpl_cfg.N_CTX_V != dpl_cfg.N_CTX_T
                                        or dpl_cfg.DEPTH_V > dpl_cfg.DEPTH_T):
            raise ConfigError("TRAINER.DPL.COUPLE linear needs BRANCH both, N_CTX_V == N_CTX_T and DEPTH_V <= DEPTH_T")
        print(f"{NAME}: branch {dpl_cfg.BRANCH}, mix {dpl_cfg.MIX}, LCTP {dpl_cfg.LCTP}, couple {dpl_cfg.COUPLE}")

        # Prompts are fp32 in every precision and cast to the activation dtype where they are used.
        if self.text:
            self.ctx_text = nn.Parameter(torch.empty(dpl_cfg.DEPTH_T, dpl_cfg.N_CTX_T, sizes.text_width))
            nn.init.normal_(self.ctx_text, std=0.02)                      # (J_t, M_t, text_width)
        if self.vision and dpl_cfg.COUPLE == "linear":
            self.couple = nn.ModuleList(nn.Linear(sizes.text_width, sizes.vision_width) for _ in range(dpl_cfg.DEPTH_V))
        elif self.vision:
            self.ctx_vision = nn.Parameter(torch.empty(dpl_cfg.DEPTH_V, dpl_cfg.N_CTX_V, sizes.vision_width))
            nn.init.normal_(self.ctx_vision, std=0.02)                    # (J_v, M_v, vision_width)
        if not self.exact:
            heads = {"vision": clip_model.visual.transformer.resblocks[0].attn.num_heads,
                     "text": clip_model.transformer.resblocks[0].attn.num_heads}
            depths = {"vision": dpl_cfg.DEPTH_V, "text": dpl_cfg.DEPTH_T}
            # alpha = ALPHA_MAX * sigmoid(beta): beta_init = logit(ALPHA_INIT / ALPHA_MAX) (-1.3863 for 0.1 / 0.5).
            beta = torch.logit(torch.tensor(dpl_cfg.ALPHA_INIT / dpl_cfg.ALPHA_MAX)).item()  # -inf at alpha 0
            for tower in ("vision", "text"):
                if getattr(self, tower):
                    value = torch.full((depths[tower], heads[tower]), beta)  # (J, heads)
                    if dpl_cfg.ALPHA_LEARN:
                        setattr(self, f"beta_{tower}", nn.Parameter(value))
                    else:  # a fixed gate is a function of the config, not a checkpoint entry
                        self.register_buffer(f"beta_{tower}", value, persistent=False)

    def vision_prompts(self):
        """(J_v, M_v, vision_width): learned, or coupled to the text prompts (COUPLE linear)."""
        if hasattr(self, "couple"):
            return torch.stack([layer(prompt) for layer, prompt in zip(self.couple, self.ctx_text)])
        return self.ctx_vision

    def alpha(self, tower):
        """Gates (J, heads) in fp32, or None for MIX=exact."""
        return None if self.exact else self.alpha_max * torch.sigmoid(getattr(self, f"beta_{tower}"))


def check_alpha(dpl_cfg):
    if not 0 <= dpl_cfg.ALPHA_INIT <= dpl_cfg.ALPHA_MAX or dpl_cfg.ALPHA_MAX <= 0:
        raise ConfigError(f"TRAINER.DPL needs 0 <= ALPHA_INIT <= ALPHA_MAX and ALPHA_MAX > 0, got "
                         f"{dpl_cfg.ALPHA_INIT} and {dpl_cfg.ALPHA_MAX}")
    if dpl_cfg.ALPHA_LEARN and dpl_cfg.ALPHA_INIT in (0, dpl_cfg.ALPHA_MAX):
        raise ConfigError("TRAINER.DPL.ALPHA_INIT at 0 or ALPHA_MAX saturates the gate (no gradient): "
                         "set ALPHA_LEARN False to keep it fixed there")


def decoupled_blocks(prompts, alpha, eot=None):
    """A `block_fn` for the deep-prompt encoders: blocks 0..J-1 decoupled, the rest CLIP's own."""
    def block_fn(layer, block, x, mask):
        if layer >= prompts.shape[0]:
            return run_block(block, x, mask)
        return dpl_block(block, x, prompts[layer], None if alpha is None else alpha[layer], mask, eot)
    return block_fn


class DPLModel(PromptedCLIP):
    """Frozen CLIP whose prompted blocks use decoupled attention; text input is the hand-crafted sentence."""

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        dpl_cfg = cfg.TRAINER.DPL
        self.prompt_learner = DPLPromptLearner(dpl_cfg, clip_model)
        self.image_encoder = DeepPromptedVisionEncoder(clip_model.visual)
        self.frozen_image_encoder = not self.prompt_learner.vision
        self.lctp = dpl_cfg.LCTP
        # LCTP keeps CLIP's zero-shot input: the dataset's hand-crafted sentence per class.
        sentences = template_prompts(clip_model.token_embedding, template_for(cfg.DATASET.NAME), classnames, self.dtype)
        self.tokenized_prompts = sentences.tokenized                                       # (n_cls, 77)
        self.register_buffer("sentence_embeddings", sentences.embedding, persistent=False)  # (n_cls, 77, text_width)
        self.frozen_text_features = None

    def encode_text(self):
        learner = self.prompt_learner
        if not learner.text:  # frozen CLIP text features: computed once
            if self.frozen_text_features is None:
                with torch.no_grad():
                    self.frozen_text_features = self.text_encoder(self.sentence_embeddings, self.tokenized_prompts)
            return self.frozen_text_features
        eot = eot_indices(self.tokenized_prompts).to(self.sentence_embeddings.device) if self.lctp else None
        block_fn = decoupled_blocks(learner.ctx_text, learner.alpha("text"), eot)
        return self.text_encoder(self.sentence_embeddings, self.tokenized_prompts, block_fn=block_fn)

    def encode_image(self, images):
        learner = self.prompt_learner
        if not learner.vision:
            return super().encode_image(images)
        block_fn = decoupled_blocks(learner.vision_prompts(), learner.alpha("vision"))
        return self.image_encoder(images.type(self.dtype), block_fn=block_fn)


@TRAINERS.register("DPL", config=add_dpl_config)
class DPL(TrainerBase):
    """DPL (reconstructed): trains the prompts and gates in `prompt_learner`; CLIP stays frozen."""

    config_node = "DPL"
    checkpoint_name = "prompt_learner"
    trainable = ("prompt_learner.",)

    def build_model(self, clip_model, classnames):
        return DPLModel(self.cfg, classnames, clip_model)

    def compute_loss(self, batch):
        logits = self.model(batch.images)
        return F.cross_entropy(logits.float(), batch.labels), logits
