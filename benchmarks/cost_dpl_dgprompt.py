"""Training-step and evaluation cost of DPL and DGPrompt (both reconstructed) relative to MaPLe.

Prints, from one run on the same CLIP, data and device (paper settings: prompt depth 9 where the
backbone has the layers, batch 4 for training, 100 for testing):
  <method> / MaPLe   seconds per training step (forward, loss, backward, SGD step on the base
                     classes) and per full evaluation (text features computed once per evaluation
                     where the method allows it, as the trainer does), divided by MaPLe's;
  DGPrompt full 77 / truncated   the same times with DGPrompt's text sequences run over all 77
                     positions (TRUNCATE_TEXT False) divided by the default (up to the last EOT).
DGPrompt runs with image-guided text prompts (one text sequence per image and class, CoCoOp-like)
and, as `DGPrompt IGT off`, with instance-agnostic ones. Each method's loss is its trainer's.
The backbone is a randomly initialised CLIP (timings do not depend on the weight values):
ViT-B/16's architecture by default, `--tiny` for the tests' tiny CLIP; `--backbone` takes a real one.

    python benchmarks/cost_dpl_dgprompt.py [--tiny] [--base-classes 50] [--classes 50] [--images 500]
"""
import argparse

import torch
import torch.nn.functional as F

# common first: it puts the repository root on sys.path
from common import add_backbone_args, backbone_label, random_batches, setup_backbone, time_test, time_train  # noqa: I001
import trainers  # noqa: F401,E402  (registers every config hook)
from engine.config import build_cfg
from trainers.deep_prompting import tower_sizes
from trainers.dgprompt import DGPromptModel
from trainers.dpl import DPLModel
from trainers.maple import MaPLeModel


def reconstructed(name):
    """The name users see: DPL and DGPrompt are reconstructions."""
    return name.replace("DPL", "DPL (reconstructed)").replace("DGPrompt", "DGPrompt (reconstructed)")


def cross_entropy_loss(model):
    return lambda images, labels: F.cross_entropy(model(images).float(), labels)


def build(name, clip_model, classnames, depth, device):
    """(model, loss(images, labels)) for one method at its paper settings (depth capped by the backbone)."""
    cfg = build_cfg()
    cfg.DATASET.NAME = "ImageNet"  # template "a photo of a {}."
    if name == "MaPLe":
        cfg.TRAINER.MAPLE.PROMPT_DEPTH = depth
        model = MaPLeModel(cfg, classnames, clip_model)
    elif name == "DPL":
        cfg.TRAINER.DPL.DEPTH_V = cfg.TRAINER.DPL.DEPTH_T = depth
        model = DPLModel(cfg, classnames, clip_model)
    else:
        cfg.TRAINER.DGPROMPT.DEPTH = depth
        cfg.TRAINER.DGPROMPT.IGT = "IGT off" not in name
        cfg.TRAINER.DGPROMPT.TRUNCATE_TEXT = "full 77" not in name
        model = DGPromptModel(cfg, classnames, clip_model)
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.startswith("prompt_learner."))
    model = model.to(device)
    loss = (lambda images, labels: model.loss(images, labels)[0]) if name.startswith("DGPrompt") else \
        cross_entropy_loss(model)
    return model, loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--base-classes", type=int, default=50, help="classes seen in training")
    parser.add_argument("--classes", type=int, default=50, help="classes at evaluation")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (batch 4)")
    parser.add_argument("--images", type=int, default=500, help="evaluation images (batch 100)")
    args = parser.parse_args(argv)

    device, precision, clip_model = setup_backbone(args)
    sizes = tower_sizes(clip_model)
    depth = min(9, sizes.text_layers, sizes.vision_layers)
    size = clip_model.visual.input_resolution
    torch.manual_seed(0)
    train_batches = [(torch.randn(4, 3, size, size, device=device),
                      torch.randint(args.base_classes, (4,), device=device)) for _ in range(args.steps)]
    test_batches = random_batches(clip_model, args.images, 100, device)
    base = [f"class {i}" for i in range(args.base_classes)]
    new = [f"other class {i}" for i in range(args.classes)]

    print(f"device {device}, precision {precision.name}, depth {depth}, {args.base_classes} training classes "
          f"(batch 4, {args.steps} steps), {args.classes} test classes ({args.images} images, batch 100), backbone "
          f"{backbone_label(args)}")
    names = ["MaPLe", "DPL", "DGPrompt", "DGPrompt IGT off", "DGPrompt full 77"]
    timings = {}
    for name in names:
        model, loss_fn = build(name, clip_model, base, depth, device)
        train_time = time_train(model, loss_fn, train_batches, device, precision)
        model, _ = build(name, clip_model, new, depth, device)
        timings[name] = train_time, time_test(model, test_batches, device, precision)
        del model
        print(f"  {reconstructed(name):>34}: {1000 * train_time:8.1f} ms / train step   "
              f"{timings[name][1]:8.3f} s / evaluation", flush=True)
    maple_train, maple_test = timings["MaPLe"]
    for name in names[1:4]:
        label = reconstructed(name)
        train_time, test_time = timings[name]
        print(f"{label} / MaPLe: train step {train_time / maple_train:.2f}x, evaluation {test_time / maple_test:.2f}x")
    (full_train, full_test), (short_train, short_test) = timings["DGPrompt full 77"], timings["DGPrompt"]
    print(f"DGPrompt (reconstructed) full 77 tokens / truncated: train step {full_train / short_train:.2f}x, "
          f"evaluation {full_test / short_test:.2f}x")


if __name__ == "__main__":
    main()
