"""Evaluation cost of CoOp with and without text-feature caching, against zero-shot CLIP.

Prints, from one run on the same model, data and device:
  cached / uncached   CoOp evaluation time with text features computed once per evaluation,
                      divided by the time when every test batch re-encodes all class prompts;
  cached / zero-shot  the same, divided by zero-shot CLIP's time (the floor: image tower only).

Both CoOp paths are the trainer's own: `model(images, text_features=...)` vs `model(images)`.
By default the backbone is a randomly initialised CLIP with ViT-B/16's architecture (timings
do not depend on the weight values); `--backbone` takes a real CLIP name or checkpoint.

    python benchmarks/eval_speed.py [--classes 100] [--images 1000] [--batch 100] [--device cuda]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.clip_loading import clip, load_clip_to_cpu  # noqa: E402
from engine.config import build_cfg  # noqa: E402
from engine.precision import resolve_precision  # noqa: E402
from trainers.coop import CoOpModel  # noqa: E402
from trainers.zsclip import ZeroshotCLIPModel  # noqa: E402

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)


def build_clip(backbone, tiny):
    if backbone:
        return load_clip_to_cpu(backbone)
    arch = dict(VIT_B16, image_resolution=32, vision_width=128, transformer_width=128, vision_layers=3,
                transformer_layers=3, transformer_heads=2, embed_dim=64) if tiny else VIT_B16
    model = clip.model.CLIP(**arch)
    clip.model.convert_weights(model)
    return model.eval()


def time_eval(run_batch, batches, device):
    """Seconds for one full evaluation pass (after one warm-up pass)."""
    for images in batches[:1]:
        run_batch(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images in batches:
        run_batch(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="", help="CLIP name or checkpoint (default: random ViT-B/16)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random CLIP (CPU smoke run)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--prec", default="fp16", choices=["fp16", "fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    precision = resolve_precision(args.prec, device)
    clip_model = precision.prepare_clip(build_clip(args.backbone, args.tiny))
    classnames = [f"class {i}" for i in range(args.classes)]
    cfg = build_cfg()
    cfg.TRAINER.COOP.N_CTX = 16
    with torch.no_grad():
        coop = CoOpModel(cfg, classnames, clip_model).to(device).eval()
        zeroshot = ZeroshotCLIPModel(clip_model, classnames, "a photo of a {}.").to(device).eval()
    size = clip_model.visual.input_resolution
    batches = [torch.randn(min(args.batch, args.images - i), 3, size, size, device=device)
               for i in range(0, args.images, args.batch)]

    with torch.no_grad(), precision.autocast():
        timings = {}
        timings["uncached"] = time_eval(coop, batches, device)
        start = time.perf_counter()
        text = coop.encode_text()  # once per evaluation, as the trainer does
        encode_time = time.perf_counter() - start
        timings["cached"] = encode_time + time_eval(lambda x: coop(x, text_features=text), batches, device)
        timings["zeroshot"] = time_eval(zeroshot, batches, device)

    print(f"device {device}, precision {precision.name}, {args.classes} classes, {args.images} images, "
          f"batch {args.batch}, backbone {args.backbone or ('tiny random CLIP' if args.tiny else 'random ViT-B/16')}")
    for name, seconds in timings.items():
        print(f"  {name:>9}: {seconds:.3f} s")
    print(f"CoOp eval, cached / uncached text features: {timings['cached'] / timings['uncached']:.3f}")
    print(f"CoOp eval, cached / zero-shot CLIP (floor): {timings['cached'] / timings['zeroshot']:.3f}")


if __name__ == "__main__":
    main()
