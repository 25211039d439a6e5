"""Evaluation cost of MaPLe with and without text-feature caching.

MaPLe prompts the image tower too, but its vision prompts do not depend on the image, so the
text features are still computed once per evaluation (`TEST.CACHE_TEXT_FEATURES True`, the
default). Prints, from one run on the same model, data and device:
  cached / uncached   evaluation time with the text features computed once, divided by the
                      time when every test batch re-encodes all class prompts
                      (`TEST.CACHE_TEXT_FEATURES False`).
Both paths are the trainer's own: `model(images, text_features=...)` vs `model(images)`.
The backbone is a randomly initialised CLIP (timings do not depend on the weight values):
ViT-B/16's architecture by default, `--tiny` for the tests' tiny CLIP; `--backbone` takes a real one.

    python benchmarks/eval_speed_maple.py [--tiny] [--classes 100] [--images 1000] [--batch 100] [--repeats 3]
"""
import argparse
import time

import torch

# common first: it puts the repository root on sys.path
from common import add_backbone_args, backbone_label, random_batches, setup_backbone, time_eval  # noqa: I001
from engine.config import build_cfg
from trainers.deep_prompting import tower_sizes
from trainers.maple import MaPLeModel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (the fastest counts)")
    args = parser.parse_args(argv)

    device, precision, clip_model = setup_backbone(args)
    sizes = tower_sizes(clip_model)
    cfg = build_cfg()
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = min(9, sizes.text_layers, sizes.vision_layers)  # the paper's 9 when it fits
    classnames = [f"class {i}" for i in range(args.classes)]
    with torch.no_grad():
        maple = MaPLeModel(cfg, classnames, clip_model).to(device).eval()
    batches = random_batches(clip_model, args.images, args.batch, device)

    def cached_eval():
        start = time.perf_counter()
        text = maple.encode_text()  # once per evaluation, as the trainer does
        return time.perf_counter() - start + time_eval(lambda x: maple(x, text_features=text), batches, device)

    # Alternate the two paths and keep each one's fastest pass, so load from other processes
    # does not favour either.
    cached, uncached = float("inf"), float("inf")
    with torch.no_grad(), precision.autocast():
        for _ in range(args.repeats):
            uncached = min(uncached, time_eval(maple, batches, device))
            cached = min(cached, cached_eval())

    print(f"device {device}, precision {precision.name}, {args.classes} classes, {args.images} images, "
          f"batch {args.batch}, prompt depth {cfg.TRAINER.MAPLE.PROMPT_DEPTH}, backbone "
          f"{backbone_label(args)}")
    print(f"   cached: {cached:.3f} s\n uncached: {uncached:.3f} s")
    print(f"MaPLe eval, cached / uncached text features: {cached / uncached:.3f}")


if __name__ == "__main__":
    main()
