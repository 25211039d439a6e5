"""Tiny randomly initialised CLIPs saved in OpenAI's state-dict format.

Built with `clip.model.CLIP` and loaded by the benchmark through the same path as real
weights (`MODEL.BACKBONE.NAME` = the file). Sizes are deliberately unlike ViT-B/16 so
nothing can silently assume 768/512/12. Three sizes:

- `shallow` (the tests' default): 3 layers per tower, width 128; fast.
- `deep`: 12 thin layers per tower (width 64, one head), deep enough for every method's
  paper config (MaPLe, IVLP, PromptSRC, PromptKD, DPL and DGPrompt prompt 9 layers); the demo's CLIP.
- `deep-wide`: `deep` with width 128 and another embedding size; the demo's PromptKD teacher (a
  wider CLIP than the student, as ViT-L/14 is to ViT-B/16).

CLI: `python -m tests.helpers.tiny_clip OUT.pt [--size shallow|deep|deep-wide] [--seed S]`.
"""
import argparse
import math
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP, convert_weights

# OpenAI's loader derives the head count from the width (width // 64), so heads follow the widths here.
TINY_CLIP = dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=128, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                 transformer_layers=3)
DEEP_TINY_CLIP = dict(TINY_CLIP, embed_dim=48, vision_layers=12, vision_width=64, transformer_width=64,
                      transformer_heads=1, transformer_layers=12)
DEEP_WIDE_TINY_CLIP = dict(DEEP_TINY_CLIP, embed_dim=96, vision_width=128, transformer_width=128, transformer_heads=2)
SIZES = {"shallow": TINY_CLIP, "deep": DEEP_TINY_CLIP, "deep-wide": DEEP_WIDE_TINY_CLIP}


def make_tiny_clip(path, seed=0, size="shallow", **overrides):
    """Write a random tiny CLIP (fp16 weights, like OpenAI's) of one of `SIZES` to `path`; returns the path."""
    torch.manual_seed(seed)
    model = CLIP(**{**SIZES[size], **overrides})
    model.logit_scale.data.fill_(math.log(100.0))  # as in the released weights: exp() = 100
    convert_weights(model)
    torch.save(model.state_dict(), path)
    return str(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--size", choices=SIZES, default="shallow")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_clip(args.out, args.seed, size=args.size))
