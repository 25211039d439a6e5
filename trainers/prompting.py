"""Shared prompt machinery: context init, prompt assembly, prompted text encoder, logits.

Everything here is written once and reused by every method (docs/methods/coop.md):
- `init_context`: learnable context from a phrase or N(0, 0.02^2), in the model dtype;
- `ClassPrompts`: tokenized templates, EOT indices, the frozen SOT/suffix embeddings;
- `assemble_prompts`: [SOT] ctx suffix for the end/middle/front class-token positions;
- `PromptedTextEncoder`: CLIP's text transformer fed prompt embeddings instead of token ids,
  with optional deep prompts per layer, run only up to the last EOT (the causal mask makes later
  tokens irrelevant), and running a prefix shared by every class prompt ([SOT] + context) once
  instead of once per class;
- `run_deep_blocks`: CLIP's blocks with deep prompts, for the text encoder here and the vision
  encoder of deep_prompting.py;
- `normalize`, `clip_logits` and `PromptedCLIP`, the base model with cached-text-feature evaluation.
Nothing assumes ViT-B/16 sizes: widths, lengths and layer counts are read from the model.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.clip_loading import clip
from engine.errors import ConfigError

_tokenizer = clip.simple_tokenizer.SimpleTokenizer()


def tokenize(texts):
    """CLIP tokenization to (N, 77) int64; over-long texts raise as in CLIP."""
    return clip.tokenize(texts).long()


def class_text(classname):
    """Class names keep `_` in the split files; prompts show spaces."""
    return classname.replace("_", " ")


@dataclass
class ContextInit:
    ctx: torch.Tensor      # (n_ctx, dim) or (n_cls, n_ctx, dim) with CSC
    prompt_prefix: str     # text in front of the class name in the templates
    n_ctx: int


def init_context(clip_model, n_ctx, ctx_init="", n_cls=None, phrase_sets_length=True):
    """Learnable context, from a phrase or N(0, 0.02^2), in the model dtype.

    Args:
        phrase_sets_length: CoOp-family convention: a phrase sets n_ctx to its word count.
            MaPLe-family (False): the phrase is used only if n_ctx <= 4, its first n_ctx
            tokens become ctx and the whole phrase stays in the template.
        n_cls: class-specific context (CSC); ignored with a phrase init, as in the reference.
    """
    dtype = clip_model.dtype
    phrase = ctx_init.replace("_", " ") if ctx_init else ""
    if phrase and (phrase_sets_length or n_ctx <= 4):
        if phrase_sets_length:
            n_ctx = len(phrase.split(" "))
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenize(phrase)).type(dtype)
        ctx = embedding[0, 1:1 + n_ctx].clone()
        prompt_prefix = phrase
    else:
        shape = (n_cls, n_ctx, clip_model.ln_final.weight.shape[0]) if n_cls else \
            (n_ctx, clip_model.ln_final.weight.shape[0])
        # Reference behaviour: fill an empty tensor of the model dtype in place.
        ctx = torch.empty(*shape, dtype=dtype)
        nn.init.normal_(ctx, std=0.02)
        prompt_prefix = " ".join(["X"] * n_ctx)
    print(f'Initial context: "{prompt_prefix}"')
    print(f"Number of context words (tokens): {n_ctx}")
    return ContextInit(ctx, prompt_prefix, n_ctx)


@dataclass
class ClassPrompts:
    """Frozen pieces of `"<prompt_prefix> <classname>."` per class; `n_ctx` slots after SOT are learned.

    Prompt learners register `token_prefix` and `token_suffix` as buffers under these
    official names; they are rebuilt from the current class names, never loaded.
    """
    tokenized: torch.Tensor     # (n_cls, 77) token ids; EOT = argmax
    token_prefix: torch.Tensor  # (n_cls, 1, dim): SOT
    token_suffix: torch.Tensor  # (n_cls, 77 - 1 - n_ctx, dim): class name, '.', EOT, padding
    name_lens: list             # BPE tokens per class name (middle/front positions)
    texts: list                 # the template strings


def build_class_prompts(clip_model, classnames, prompt_prefix, n_ctx):
    names = [class_text(name) for name in classnames]
    texts = [f"{prompt_prefix} {name}." for name in names]
    tokenized = tokenize(texts)
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokenized).type(clip_model.dtype)
    return ClassPrompts(tokenized, embedding[:, :1, :], embedding[:, 1 + n_ctx:, :],
                        [len(_tokenizer.encode(name)) for name in names], texts)


@dataclass(frozen=True)
class SharedPrefix:
    """Positions 0..length-1 are one and the same tensor in every sequence of a group.

    The sequences form `groups` consecutive groups of equal size (1 = all of them; DGPrompt:
    one group per image). Under CLIP's causal mask such a prefix has the same hidden states in
    every sequence of its group at every layer, so the text encoder runs it once per group.
    """
    length: int
    groups: int = 1


def mark_shared_prefix(tensor, length, groups=1):
    """Declare that `tensor`'s first `length` positions are shared within each of `groups` groups of rows.

    Only for rows that are copies of one tensor (an `expand`ed context, frozen equal tokens), never for
    rows that merely hold equal values: the gradient of the shared positions reaches the source through
    the group's first row alone. Any operation on the tensor returns a new, unmarked one.
    """
    tensor.shared_prefix = SharedPrefix(length, groups)
    return tensor


def _frozen_shared_positions(tokens):
    """Leading positions at which frozen `tokens` (n, L, dim) hold the same embedding in every row."""
    if tokens.requires_grad:
        return 0
    same = (tokens == tokens[:1]).all(dim=2).all(dim=0)
    return int(same.int().cumprod(dim=0).sum())


def assemble_prompts(ctx, token_prefix, token_suffix, name_lens=None, position="end"):
    """Concatenate [SOT] ctx suffix along the token axis.

    ctx: (n_ctx, dim) shared or (n_cls, n_ctx, dim) class-specific; token_prefix: the SOT
    embeddings (n_cls, 1, dim); token_suffix: class name, '.', EOT and padding (n_cls, rest, dim).
    Returns (n_cls, n_tokens, dim). With a shared ctx and the class name at the end, the result is
    marked with its shared prefix: SOT, ctx and any frozen words every class prompt starts with.
    """
    n_cls = token_prefix.shape[0]
    ctx_for_all_classes = ctx.dim() == 2
    if ctx_for_all_classes:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    if position == "end":
        prompts = torch.cat([token_prefix, ctx, token_suffix], dim=1)
        if ctx_for_all_classes and _frozen_shared_positions(token_prefix) == token_prefix.shape[1]:
            n_shared = token_prefix.shape[1] + ctx.shape[1] + _frozen_shared_positions(token_suffix)
            mark_shared_prefix(prompts, n_shared)
        return prompts
    if position not in ("middle", "front"):
        raise ConfigError(f"CLASS_TOKEN_POSITION must be end, middle or front, got {position!r}")
    half = ctx.shape[1] // 2
    prompts = []
    for i, name_len in enumerate(name_lens):
        name, rest = token_suffix[i:i + 1, :name_len], token_suffix[i:i + 1, name_len:]
        ctx_i = ctx[i:i + 1]
        if position == "middle":
            parts = [token_prefix[i:i + 1], ctx_i[:, :half], name, ctx_i[:, half:], rest]
        else:
            parts = [token_prefix[i:i + 1], name, ctx_i, rest]
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0)


def eot_indices(tokenized_prompts):
    """EOT position per prompt: EOT has the largest token id."""
    return tokenized_prompts.argmax(dim=-1)


def causal_mask(length, dtype, device):
    """CLIP's additive causal mask for `length` tokens."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


def run_block(block, x, attn_mask=None):
    """One of CLIP's own residual blocks on an LND sequence of any length.

    Same operations as `ResidualAttentionBlock.forward`, but with a mask for the actual
    length (the block's stored mask is fixed at 77 tokens).
    """
    y = block.ln_1(x)
    x = x + block.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
    return x + block.mlp(block.ln_2(x))


def run_block_after_prefix(block, shared_x, x, mask):
    """One of CLIP's own blocks for the positions after a shared prefix.

    shared_x: (P, G, width) LND input of this block at the shared positions, one column per group;
    x: (L, G * M, width) the following positions of G groups of M sequences (group-major);
    mask: (L, L) causal mask among them. Each query of `x` attends to its group's prefix keys and
    values and, causally, to its own sequence: the same attention as `run_block` over the whole
    sequence, with the prefix's keys and values computed once per group instead of once per
    sequence. Scores and softmax are fp32 (as CLIP's fused attention kernels keep them). Returns
    the block's output at the positions of `x`; the prefix itself goes through `run_block`.
    """
    attn = block.attn
    length, n_seq, width = x.shape
    n_shared, groups = shared_x.shape[:2]
    per_group, n_heads = n_seq // groups, attn.num_heads
    head_dim = width // n_heads

    def split_heads(t, n):  # (L, groups * n, width) -> (groups, heads, n, L, head_dim)
        return t.reshape(t.shape[0], groups, n, n_heads, head_dim).permute(1, 3, 2, 0, 4)

    q, k, v = (split_heads(t, per_group) for t in
               F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    shared_k, shared_v = (split_heads(t, 1)[:, :, 0] for t in  # (groups, heads, P, head_dim)
                          F.linear(block.ln_1(shared_x), attn.in_proj_weight[width:], attn.in_proj_bias[width:])
                          .chunk(2, dim=-1))
    with torch.autocast(x.device.type, enabled=False):
        q = q.float() * head_dim ** -0.5
        # every query of a group against the group's prefix: one (M * L, P) product per group and head
        to_shared = q.reshape(groups, n_heads, per_group * length, head_dim) @ shared_k.float().transpose(-1, -2)
        to_self = q @ k.float().transpose(-1, -2) + mask                               # (G, h, M, L, L)
        scores = torch.cat([to_shared.view(groups, n_heads, per_group, length, n_shared), to_self], dim=-1)
        weights = scores.softmax(dim=-1).type(v.dtype)
    from_shared = weights[..., :n_shared].reshape(groups, n_heads, per_group * length, n_shared) @ shared_v
    out = from_shared.view(groups, n_heads, per_group, length, head_dim) + weights[..., n_shared:] @ v
    x = x + attn.out_proj(out.permute(3, 0, 2, 1, 4).reshape(length, n_seq, width))
    return x + block.mlp(block.ln_2(x))


# ---- deep prompts: prompt tokens replaced at the input of later blocks (text and vision towers) ----

def prompt_tokens(prompt, n_seq, dtype):
    """(n, width) or (n_seq, n, width) prompt -> (n, n_seq, width) LND tokens in `dtype`."""
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(n_seq, -1, -1)
    return prompt.type(dtype).permute(1, 0, 2)


def _check_depth(deep_prompts, blocks):
    if len(deep_prompts) > len(blocks) - 1:
        raise ValueError(f"{len(deep_prompts)} deep prompts for {len(blocks)} blocks: at most "
                         f"{len(blocks) - 1} (deep prompt i enters block i + 1)")


def run_deep_blocks(blocks, x, mask, deep_prompts, replace, block_fn=None):
    """Run `blocks` on LND `x`, replacing prompt tokens at the input of blocks 1..len(deep_prompts).

    `replace(x, tokens)` puts a deep prompt's tokens in place (text: after SOT; vision: the last
    positions); `block_fn(layer, block, x, mask)` replaces `run_block`. The conventions of both
    towers are described in deep_prompting.py.
    """
    _check_depth(deep_prompts, blocks)
    for layer, block in enumerate(blocks):
        if 1 <= layer <= len(deep_prompts) and deep_prompts[layer - 1] is not None:
            x = replace(x, prompt_tokens(deep_prompts[layer - 1], x.shape[1], x.dtype))
        x = block_fn(layer, block, x, mask) if block_fn else run_block(block, x, mask)
    return x


def _replace_after_sot(x, tokens):
    """Text tower: positions 1..n (right after SOT) become `tokens`."""
    return torch.cat([x[:1], tokens, x[1 + tokens.shape[0]:]], dim=0)


def _prompt_per_group(prompt, n_seq, shared):
    """A deep prompt as (n, groups, width) tokens for the shared prefix, or None if it cannot be shared:
    it differs within a group, or it reaches past the prefix."""
    if prompt.dim() == 2:
        tokens = prompt.unsqueeze(0).expand(shared.groups, -1, -1)
    elif getattr(prompt, "shared_prefix", None) is not None and prompt.shared_prefix.groups == shared.groups \
            and prompt.shared_prefix.length >= prompt.shape[1]:
        tokens = prompt[::n_seq // shared.groups]
    else:
        return None
    return tokens.permute(1, 0, 2) if 1 + prompt.shape[-2] <= shared.length else None


class PromptedTextEncoder(nn.Module):
    """CLIP's `encode_text` with prompt embeddings in place of the token lookup, and optional deep prompts.

    Attribute names match the official `TextEncoder`, so whole-model checkpoints
    (`text_encoder.transformer...`) line up.

    Prompts marked with a shared prefix (`assemble_prompts` marks shared-context, class-at-the-end
    prompts; `mark_shared_prefix` others) run that prefix once per group and only the later
    positions per sequence; the features equal the plain computation up to float rounding. With
    deep prompts this holds when every one of them replaces positions inside that prefix with one
    tensor per group: a shared (n, width) prompt, or a per-sequence one marked with the same groups
    (DGPrompt's per-image prompts). A `block_fn` sees whole sequences, so it takes the plain path.
    `share_prefix = False` on an instance (or `use_shared_prefix(model, False)`) forces the plain
    path, for checks and timings.
    """

    share_prefix = True

    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts, deep_prompts=(), block_fn=None, truncate=True):
        """prompts: (N, 77, width) embeddings; tokenized_prompts: (N, 77). Returns (N, embed_dim).

        `prompts` already holds the layer-0 prompt at positions 1..n (right after SOT;
        `assemble_prompts` puts it there); `deep_prompts[i]` replaces positions 1..n at the input of
        block i + 1 and `block_fn` replaces `run_block` (`run_deep_blocks`). Only the positions up to
        the last EOT run (the causal mask makes later ones irrelevant); truncate=False runs every
        position of `prompts` (same features; for checks and timings).
        """
        blocks = self.transformer.resblocks
        _check_depth(deep_prompts, blocks)
        eot = eot_indices(tokenized_prompts).to(prompts.device)
        # Positions after the last EOT never reach any EOT.
        length = int(eot.max()) + 1 if truncate else prompts.shape[1]
        shared = self.shared_prefix(prompts, tokenized_prompts) if block_fn is None else None
        if shared is not None:
            per_group = [None if prompt is None else _prompt_per_group(prompt, prompts.shape[0], shared)
                         for prompt in deep_prompts]
            if all(tokens is not None or prompt is None for tokens, prompt in zip(per_group, deep_prompts)):
                return self.encode_after_prefix(prompts[:, :length], eot, shared, per_group)
        x = prompts[:, :length] + self.positional_embedding[:length].type(self.dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = run_deep_blocks(blocks, x, causal_mask(length, x.dtype, x.device), deep_prompts, _replace_after_sot,
                            block_fn)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_final(x).type(self.dtype)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def shared_prefix(self, prompts, tokenized_prompts):
        """The prefix to run once per group (a `SharedPrefix`), or None for the plain path.

        It stops before the first EOT (features are read after it) and is used only when it holds more
        than SOT and a group has more than one sequence.
        """
        marked = getattr(prompts, "shared_prefix", None)
        if not self.share_prefix or marked is None or prompts.shape[0] % marked.groups \
                or prompts.shape[0] // marked.groups < 2:
            return None
        length = min(marked.length, int(eot_indices(tokenized_prompts).min()))
        return SharedPrefix(length, marked.groups) if length > 1 else None

    def encode_after_prefix(self, prompts, eot, shared, deep_prompts_per_group):
        """`forward` with the shared prefix run once per group (the group's first row) and the positions
        after it per sequence. prompts: (N, L, width), the positions to run; eot: (N,) EOT positions;
        each deep prompt is one (n, groups, width) tensor, or None."""
        length = prompts.shape[1]
        n_shared, per_group = shared.length, prompts.shape[0] // shared.groups
        position = self.positional_embedding[:length].type(self.dtype)
        shared_x = (prompts[::per_group, :n_shared] + position[:n_shared]).permute(1, 0, 2)  # (P, G, width)
        x = (prompts[:, n_shared:length] + position[n_shared:]).permute(1, 0, 2)            # (L - P, N, width)
        shared_mask, mask = causal_mask(n_shared, x.dtype, x.device), causal_mask(length - n_shared, x.dtype, x.device)
        for layer, block in enumerate(self.transformer.resblocks):
            if 1 <= layer <= len(deep_prompts_per_group) and deep_prompts_per_group[layer - 1] is not None:
                shared_x = _replace_after_sot(shared_x, deep_prompts_per_group[layer - 1].type(shared_x.dtype))
            shared_x, x = run_block(block, shared_x, shared_mask), run_block_after_prefix(block, shared_x, x, mask)
        x = x.permute(1, 0, 2)[torch.arange(x.shape[1], device=x.device), eot - n_shared]  # the EOT tokens
        return self.ln_final(x).type(self.dtype) @ self.text_projection


def use_shared_prefix(module, enabled=True):
    """Switch the shared-prefix path of every prompted text encoder inside `module` on or off."""
    for encoder in module.modules():
        if isinstance(encoder, PromptedTextEncoder):
            encoder.share_prefix = enabled
    return module


def normalize(features):
    """Features divided by their L2 norm over the last dimension."""
    return features / features.norm(dim=-1, keepdim=True)


def clip_logits(image_features, text_features, logit_scale):
    """`logit_scale.exp() * normalize(f) @ normalize(t).T`, the scale applied first."""
    return logit_scale.exp() * normalize(image_features) @ normalize(text_features).t()


class PromptedCLIP(nn.Module):
    """Frozen CLIP plus learned prompts. Subclasses implement `encode_text()`.

    `forward(images, text_features=None)` returns logits; the engine passes text features it
    computed once per evaluation, since they do not depend on the image.
    """

    frozen_image_encoder = True  # False when prompts enter the image tower (MaPLe, ...)

    def __init__(self, clip_model):
        super().__init__()
        self.image_encoder = clip_model.visual
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def encode_text(self):
        """Text features (n_cls, embed_dim) of the current class prompts."""
        raise NotImplementedError

    def encode_image(self, images):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_image_encoder):
            return self.image_encoder(images.type(self.dtype))

    def forward(self, images, text_features=None):
        if text_features is None:
            text_features = self.encode_text()
        return clip_logits(self.encode_image(images), text_features, self.logit_scale)

