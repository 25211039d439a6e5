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
import torch.nn.functional as F

# common first: it puts the repository root on sys.path
from common import BaseNewWorkload, time_test, time_train  # noqa: I001
import trainers  # noqa: F401,E402  (registers every config hook)
from engine.config import build_cfg
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
    w = BaseNewWorkload(__doc__, argv)
    device, precision, clip_model, depth = w.device, w.precision, w.clip_model, w.depth
    train_batches, test_batches, base, new = w.train_batches, w.test_batches, w.base, w.new
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
