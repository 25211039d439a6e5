"""Training-step and evaluation cost of IVLP and PromptSRC relative to MaPLe.

Prints, from one run on the same CLIP, data and device (paper settings: prompt depth 9 where the
backbone has the layers, 4+4 context tokens for IVLP/PromptSRC, 2 for MaPLe, batch 4 for
training, 100 for testing):
  <method> / MaPLe   seconds per training step (forward, loss, backward, SGD step on the base
                     classes) and per full evaluation (text features computed once per
                     evaluation, as the trainer does), divided by MaPLe's.
PromptSRC's step includes its zero-shot image forward and the four loss terms; its zero-shot text
targets (60 templates per class) are built once, before timing, and reported separately, as is the
once-per-run cost of Gaussian prompt aggregation (per-epoch accumulation and the final fold of the
frozen weights). Evaluation is the same model for IVLP and PromptSRC.
The backbone is a randomly initialised CLIP (timings do not depend on the weight values):
ViT-B/16's architecture by default, `--tiny` for the tests' tiny CLIP; `--backbone` takes a real one.

    python benchmarks/cost_promptsrc.py [--tiny] [--base-classes 50] [--classes 50] [--images 500]
"""
import copy
import time

import torch.nn.functional as F

# common first: it puts the repository root on sys.path
from common import BaseNewWorkload, synchronize, time_test, time_train  # noqa: I001
import trainers  # noqa: F401,E402  (registers every config hook)
from engine.config import build_cfg
from trainers.ivlp import IVLPModel, is_ivlp_trainable
from trainers.maple import MaPLeModel
from trainers.promptsrc import PromptSRCModel, add_weighted, fold_constant, gaussian_weights


def paper_promptsrc_cfg(depth):
    """PromptSRC's defaults (4+4 tokens; IVLP's paper config uses the same) at the given depth."""
    promptsrc_cfg = build_cfg().TRAINER.PROMPTSRC
    promptsrc_cfg.PROMPT_DEPTH_TEXT = promptsrc_cfg.PROMPT_DEPTH_VISION = depth
    return promptsrc_cfg


def build(name, clip_model, classnames, depth, device):
    """(model, loss(images, labels)) for one method at its paper settings (depth capped by the backbone).

    IVLP and PromptSRC attach their deep prompts to CLIP's blocks, so each gets its own CLIP copy."""
    if name == "MaPLe":
        cfg = build_cfg()
        cfg.TRAINER.MAPLE.PROMPT_DEPTH = depth
        model = MaPLeModel(cfg, classnames, clip_model)
        trainable = lambda n: n.startswith("prompt_learner.")  # noqa: E731
    else:
        model_cls = PromptSRCModel if name == "PromptSRC" else IVLPModel
        model = model_cls(paper_promptsrc_cfg(depth), classnames, copy.deepcopy(clip_model))
        trainable = is_ivlp_trainable
    for param_name, param in model.named_parameters():
        param.requires_grad_(trainable(param_name))
    model = model.to(device)
    if name == "PromptSRC":
        return model, model.loss
    return model, lambda images, labels: F.cross_entropy(model(images).float(), labels)


def time_once(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_aggregation(model, device, epochs=20):
    """Seconds GPA adds to a whole run: one accumulation per epoch plus the final fold of the frozen tensors."""
    weights = gaussian_weights(15, 1, epochs)
    prompts = {k: p.detach() for k, p in model.named_parameters() if is_ivlp_trainable(k)}
    frozen = {k: v for k, v in model.state_dict().items() if v.is_floating_point() and not is_ivlp_trainable(k)}

    def run():
        accumulator = {}
        for weight in weights:
            add_weighted(accumulator, prompts, weight)
        for value in frozen.values():
            fold_constant(value, weights)

    return time_once(run, device)


def main(argv=None):
    w = BaseNewWorkload(__doc__, argv)
    device, precision, clip_model, depth = w.device, w.precision, w.clip_model, w.depth
    train_batches, test_batches, base, new, args = w.train_batches, w.test_batches, w.base, w.new, w.args
    names = ["MaPLe", "IVLP", "PromptSRC"]
    timings = {}
    for name in names:
        model, loss_fn = build(name, clip_model, base, depth, device)
        if name == "PromptSRC":
            targets = time_once(lambda: setattr(model, "fixed_embeddings", model.zero_shot_text_features()), device)
            gpa = time_aggregation(model, device)
        train_time = time_train(model, loss_fn, train_batches, device, precision)
        del model
        model, _ = build(name, clip_model, new, depth, device)
        timings[name] = train_time, time_test(model, test_batches, device, precision)
        del model
        print(f"  {name:>9}: {1000 * train_time:8.1f} ms / train step   {timings[name][1]:8.3f} s / evaluation",
              flush=True)
    maple_train, maple_test = timings["MaPLe"]
    for name in names[1:]:
        train_time, test_time = timings[name]
        print(f"{name} / MaPLe: train step {train_time / maple_train:.2f}x, evaluation {test_time / maple_test:.2f}x")
    print(f"PromptSRC once per run: zero-shot text targets ({args.base_classes} classes x 60 templates) "
          f"{targets:.3f} s; GPA over 20 epochs {gpa:.3f} s")


if __name__ == "__main__":
    main()
