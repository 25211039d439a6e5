"""Deep prompts: CLIP's own residual blocks, with prompt tokens inserted or replaced per layer.

Shared by every method that prompts inside the towers (MaPLe, DPL, DGPrompt, DPC's deep
backbones). The conventions are MaPLe's / IVLP's (docs/methods/maple.md); nothing here assumes
ViT-B/16 sizes.

Interface
---------
`DeepPromptedTextEncoder(clip_model)(prompts, tokenized_prompts, deep_prompts=(), block_fn=None, truncate=True)`
    A `PromptedTextEncoder` (same attributes, so whole-model checkpoint keys
    `text_encoder.transformer...` line up). `prompts` (N, 77, width) already holds the layer-0
    prompt at positions 1..n (right after SOT; `assemble_prompts` puts it there). Returns
    (N, embed_dim). Runs only up to the last EOT, like `PromptedTextEncoder` (the causal mask makes
    later tokens irrelevant);
    `truncate=False` runs all positions (DGPrompt's TRUNCATE_TEXT switch and its timing).

`DeepPromptedVisionEncoder(clip_model.visual)(images, prompts=None, deep_prompts=(), block_fn=None)`
    CLIP's ViT forward (attribute names as `clip_model.visual`, so keys `image_encoder.conv1...`
    line up). `prompts` (n, width) are appended after the class and patch tokens, after the
    positional embedding (prompts get none) and before `ln_pre`. Returns (B, embed_dim).

Both encoders:
    * `deep_prompts[i]` replaces the prompt tokens at the *input of block i + 1*: positions
      1..n in the text tower, the last n tokens in the vision tower. Block 0 sees the layer-0
      prompts; blocks after the last deep prompt carry whatever the previous block produced at
      those positions (prompts are replaced, never appended, so lengths never change).
      At most `layers - 1` deep prompts; a `None` entry leaves that block's input as it is.
    * A prompt (layer-0 or deep) is (n, width), shared by all sequences, or (N, n, width), one
      per sequence (e.g. instance-conditional prompts). It is cast to the activation dtype at
      injection (the reference's hard-coded `.half()`), so fp32 prompts work in fp16/fp32/bf16.
    * `block_fn(layer_index, block, x, mask) -> x` replaces `run_block` for every block, after
      that layer's replacement: `x` is LND (tokens, N, width), `mask` the causal mask (text) or
      None (vision). Use it to change a block's attention (DPL) or to record hidden states:
      `lambda i, blk, x, m: keep(run_block(blk, x, m))`.
    * With no prompts, no deep prompts and no `block_fn` they compute `clip_model.visual`
      exactly and `clip_model.encode_text` up to float rounding (EOT truncation); tests pin both.

The text encoder runs a shared prefix once per group, as `PromptedTextEncoder` does, when the
prompts are marked with one (`assemble_prompts`, `mark_shared_prefix`), there is no `block_fn`
(it sees whole sequences), and every deep prompt replaces positions inside that prefix with one
tensor per group: a shared (n, width) prompt, or a per-sequence one marked with the same groups
(DGPrompt's per-image prompts). Anything else takes the plain path.

`tower_sizes(clip_model)` reads widths and depths from the loaded model.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.errors import ConfigError
from trainers.prompting import PromptedTextEncoder, run_block, run_block_after_prefix


@dataclass
class TowerSizes:
    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int


def tower_sizes(clip_model):
    """Widths and block counts of both towers of a (ViT) CLIP."""
    visual = clip_model.visual
    if not hasattr(visual, "transformer"):
        raise ConfigError("Deep vision prompts need a ViT CLIP backbone (e.g. ViT-B/16), not a ResNet")
    return TowerSizes(text_width=clip_model.ln_final.weight.shape[0], vision_width=visual.ln_pre.weight.shape[0],
                      text_layers=len(clip_model.transformer.resblocks),
                      vision_layers=len(visual.transformer.resblocks))


def _prompt_tokens(prompt, n_seq, dtype):
    """(n, width) or (n_seq, n, width) prompt -> (n, n_seq, width) LND tokens in `dtype`."""
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(n_seq, -1, -1)
    return prompt.type(dtype).permute(1, 0, 2)


def _replace_after_sot(x, tokens):
    """Text tower: positions 1..n (right after SOT) become `tokens`."""
    return torch.cat([x[:1], tokens, x[1 + tokens.shape[0]:]], dim=0)


def _replace_last(x, tokens):
    """Vision tower: the last n positions become `tokens`."""
    return torch.cat([x[:x.shape[0] - tokens.shape[0]], tokens], dim=0)


def _check_depth(deep_prompts, blocks):
    if len(deep_prompts) > len(blocks) - 1:
        raise ValueError(f"{len(deep_prompts)} deep prompts for {len(blocks)} blocks: at most "
                         f"{len(blocks) - 1} (deep prompt i enters block i + 1)")


def run_deep_blocks(blocks, x, mask, deep_prompts, replace, block_fn=None):
    """Run `blocks` on LND `x`, replacing prompt tokens at the input of blocks 1..len(deep_prompts)."""
    _check_depth(deep_prompts, blocks)
    for layer, block in enumerate(blocks):
        if 1 <= layer <= len(deep_prompts) and deep_prompts[layer - 1] is not None:
            x = replace(x, _prompt_tokens(deep_prompts[layer - 1], x.shape[1], x.dtype))
        x = block_fn(layer, block, x, mask) if block_fn else run_block(block, x, mask)
    return x


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


class DeepPromptedTextEncoder(PromptedTextEncoder):
    """Prompted text encoder whose deep prompts replace positions 1..n per block."""

    def forward(self, prompts, tokenized_prompts, deep_prompts=(), block_fn=None, truncate=True):
        """prompts: (N, 77, width); tokenized_prompts: (N, 77). Returns (N, embed_dim).

        truncate=False runs every position of `prompts` (same features; for checks and timings).
        """
        blocks = self.transformer.resblocks
        _check_depth(deep_prompts, blocks)
        shared = self.shared_prefix(prompts, tokenized_prompts) if block_fn is None else None
        if shared is not None:
            per_group = [None if prompt is None else _prompt_per_group(prompt, prompts.shape[0], shared)
                         for prompt in deep_prompts]
            if all(tokens is not None or prompt is None for tokens, prompt in zip(per_group, deep_prompts)):
                def run_blocks_after_prefix(prefix, x, prefix_mask, mask):
                    for layer, block in enumerate(blocks):
                        if 1 <= layer <= len(per_group) and per_group[layer - 1] is not None:
                            prefix = _replace_after_sot(prefix, per_group[layer - 1].type(prefix.dtype))
                        prefix, x = run_block(block, prefix, prefix_mask), run_block_after_prefix(block, prefix, x, mask)
                    return x

                return self.encode_after_prefix(prompts, tokenized_prompts, shared, run_blocks_after_prefix, truncate)

        def run_blocks(x, mask):
            return run_deep_blocks(blocks, x, mask, deep_prompts, _replace_after_sot, block_fn)

        return self.encode(prompts, tokenized_prompts, run_blocks, truncate)


class DeepPromptedVisionEncoder(nn.Module):
    """CLIP's ViT with prompt tokens appended after the patches.

    Holds `clip_model.visual`'s own modules under their names (no copies).
    """

    def __init__(self, visual):
        super().__init__()
        if not hasattr(visual, "transformer"):
            raise ConfigError("Deep vision prompts need a ViT CLIP backbone (e.g. ViT-B/16), not a ResNet")
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = visual.transformer
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.input_resolution = visual.input_resolution

    def forward(self, images, prompts=None, deep_prompts=(), block_fn=None):
        """images: (B, 3, H, W) in the model dtype. Returns (B, embed_dim)."""
        x = self.conv1(images)  # (B, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                             device=x.device)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + grid**2, width)
        x = x + self.positional_embedding.to(x.dtype)
        if prompts is not None:  # no positional embedding for prompt tokens
            x = torch.cat([x, _prompt_tokens(prompts, x.shape[0], x.dtype).permute(1, 0, 2)], dim=1)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = run_deep_blocks(self.transformer.resblocks, x, None, deep_prompts, _replace_last, block_fn)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])  # class token
        return x @ self.proj if self.proj is not None else x
