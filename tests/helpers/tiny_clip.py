"""A tiny randomly initialised CLIP saved in OpenAI's state-dict format.

Built with `clip.model.CLIP` and loaded by the benchmark through the same path as real
weights (`MODEL.BACKBONE.NAME` = the file). Sizes are deliberately unlike ViT-B/16 so
nothing can silently assume 768/512/12. CLI: `python -m tests.helpers.tiny_clip OUT.pt`.
"""
import argparse
import math
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP, convert_weights

TINY_CLIP = dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=128, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                 transformer_layers=3)


def make_tiny_clip(path, seed=0, **overrides):
    """Write a random tiny CLIP (fp16 weights, like OpenAI's) to `path`; returns the path."""
    torch.manual_seed(seed)
    model = CLIP(**{**TINY_CLIP, **overrides})
    model.logit_scale.data.fill_(math.log(100.0))  # as in the released weights: exp() = 100
    convert_weights(model)
    torch.save(model.state_dict(), path)
    return str(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_clip(args.out, args.seed))
