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
import torch

# common first: it puts the repository root on sys.path
from common import (backbone_label, eval_speed_parser, random_batches, setup_backbone, time_cached_eval,  # noqa: I001
                    time_eval)
from engine.config import build_cfg
from trainers.coop import CoOpModel
from trainers.zsclip import ZeroshotCLIPModel


def main(argv=None):
    args = eval_speed_parser(__doc__).parse_args(argv)

    device, precision, clip_model = setup_backbone(args)
    classnames = [f"class {i}" for i in range(args.classes)]
    cfg = build_cfg()
    cfg.TRAINER.COOP.N_CTX = 16
    with torch.no_grad():
        coop = CoOpModel(cfg, classnames, clip_model).to(device).eval()
        zeroshot = ZeroshotCLIPModel(clip_model, classnames, "a photo of a {}.").to(device).eval()
    batches = random_batches(clip_model, args.images, args.batch, device)

    with torch.no_grad(), precision.autocast():
        timings = {}
        timings["uncached"] = time_eval(coop, batches, device)
        timings["cached"] = time_cached_eval(coop, batches, device)
        timings["zeroshot"] = time_eval(zeroshot, batches, device)

    print(f"device {device}, precision {precision.name}, {args.classes} classes, {args.images} images, "
          f"batch {args.batch}, backbone {backbone_label(args)}")
    for name, seconds in timings.items():
        print(f"  {name:>9}: {seconds:.3f} s")
    print(f"CoOp eval, cached / uncached text features: {timings['cached'] / timings['uncached']:.3f}")
    print(f"CoOp eval, cached / zero-shot CLIP (floor): {timings['cached'] / timings['zeroshot']:.3f}")


if __name__ == "__main__":
    main()
