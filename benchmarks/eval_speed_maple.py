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
import torch

# common first: it puts the repository root on sys.path
from common import (backbone_label, eval_speed_parser, random_batches, setup_backbone, time_cached_eval,  # noqa: I001
                    time_eval)
from engine.config import build_cfg
from trainers.deep_prompting import tower_sizes
from trainers.maple import MaPLeModel


def main(argv=None):
    parser = eval_speed_parser(__doc__)
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

    # Alternate the two paths and keep each one's fastest pass, so load from other processes
    # does not favour either.
    cached, uncached = float("inf"), float("inf")
    with torch.no_grad(), precision.autocast():
        for _ in range(args.repeats):
            uncached = min(uncached, time_eval(maple, batches, device))
            cached = min(cached, time_cached_eval(maple, batches, device))

    print(f"device {device}, precision {precision.name}, {args.classes} classes, {args.images} images, "
          f"batch {args.batch}, prompt depth {cfg.TRAINER.MAPLE.PROMPT_DEPTH}, backbone "
          f"{backbone_label(args)}")
    print(f"   cached: {cached:.3f} s\n uncached: {uncached:.3f} s")
    print(f"MaPLe eval, cached / uncached text features: {cached / uncached:.3f}")


if __name__ == "__main__":
    main()
