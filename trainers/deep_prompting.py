"""Deep prompts: CLIP's own residual blocks, with prompt tokens inserted or replaced per layer.

Shared by every method that prompts inside the towers (MaPLe, IVLP, DPL, DGPrompt, DPC's deep
backbones). The conventions are MaPLe's / IVLP's (docs/methods/maple.md); nothing here assumes
ViT-B/16 sizes.

Interface
---------
Text tower: `PromptedTextEncoder(clip_model)(prompts, tokenized_prompts, deep_prompts=(), block_fn=None,
truncate=True)` (prompting.py), CLIP's text prompt encoder for every method. `prompts` (N, 77, width)
already holds the layer-0 prompt at positions 1..n (right after SOT; `assemble_prompts` puts it there);
deep prompts replace positions 1..n. `truncate=False` runs all positions (DGPrompt's TRUNCATE_TEXT
switch and its timing).

`DeepPromptedVisionEncoder(clip_model.visual)(images, prompts=None, deep_prompts=(), block_fn=None)`
    CLIP's ViT forward (attribute names as `clip_model.visual`, so keys `image_encoder.conv1...`
    line up). `prompts` (n, width) are appended after the class and patch tokens, after the
    positional embedding (prompts get none) and before `ln_pre`. Returns (B, embed_dim).

Both towers (`run_deep_blocks` in prompting.py):
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

The text encoder runs a shared prefix once per group when the prompts are marked with one
(`assemble_prompts`, `mark_shared_prefix`), there is no `block_fn` (it sees whole sequences), and
every deep prompt replaces positions inside that prefix with one tensor per group: a shared
(n, width) prompt, or a per-sequence one marked with the same groups (DGPrompt's per-image
prompts). Anything else takes the plain path.

`tower_sizes(clip_model)` reads widths and depths from the loaded model.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.errors import ConfigError
from trainers.prompting import prompt_tokens, run_deep_blocks


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


def check_prompt_depth(key, depth, layers):
    """A prompt depth (prompted blocks, the input included) must fit the tower: 1..layers."""
    if not 1 <= depth <= layers:
        raise ConfigError(f"{key} must be between 1 and the number of layers ({layers}), got {depth}")


def _replace_last(x, tokens):
    """Vision tower: the last n positions become `tokens`."""
    return torch.cat([x[:x.shape[0] - tokens.shape[0]], tokens], dim=0)


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
            x = torch.cat([x, prompt_tokens(prompts, x.shape[0], x.dtype).permute(1, 0, 2)], dim=1)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = run_deep_blocks(self.transformer.resblocks, x, None, deep_prompts, _replace_last, block_fn)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])  # class token
        return x @ self.proj if self.proj is not None else x
