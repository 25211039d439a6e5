"""Training-step and evaluation cost of PromptKD relative to MaPLe, and of its cached teacher text features.

Prints, from one run on the same device (paper settings: student prompts 4 tokens at depth 9, teacher
4+4 tokens at depth 9, MaPLe 2 tokens at depth 9, each capped by the backbone's layers):
  PromptKD / MaPLe   seconds per training step at each paper batch (PromptKD 8 with its frozen ViT-L/14
                     teacher's image forward; MaPLe 4), per training image, and per full evaluation
                     (text features computed once per evaluation; PromptKD's are the teacher's);
  recomputed / cached   PromptKD's training step with the teacher's text features of every class
                     recomputed at each step (the official code) divided by computed once (ours).
The CLIPs are randomly initialised (timings do not depend on the weight values): ViT-B/16's
architecture for the student and MaPLe and ViT-L/14's for the teacher by default; `--tiny` uses tiny
ones (teacher embedding 768); `--backbone` / `--teacher` take real CLIP names or checkpoints.

    python benchmarks/cost_promptkd.py [--tiny] [--classes 100] [--steps 10] [--images 500]
"""
import argparse
import copy

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

# common first: it puts the repository root on sys.path
from common import (TINY, add_backbone_args, backbone_label, build_clip, random_batches, setup_backbone,  # noqa: I001
                    time_test, time_train)
import trainers  # noqa: F401,E402  (registers every config hook)
from engine.config import build_cfg
from trainers.deep_prompting import tower_sizes
from trainers.ivlp import IVLPModel
from trainers.maple import MaPLeModel
from trainers.promptkd import PromptKDModel, distillation_loss, is_student_state
from trainers.prompting import normalize

VIT_L14 = dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
               context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12, transformer_layers=12)
TINY_TEACHER = dict(TINY, embed_dim=768, vision_width=192, transformer_width=192, transformer_heads=3)


def build_teacher_clip(args, precision):
    if args.teacher:
        return precision.prepare_clip(build_clip(args.teacher, False))
    from common import clip
    model = clip.model.CLIP(**(TINY_TEACHER if args.tiny else VIT_L14))
    clip.model.convert_weights(model)
    return precision.prepare_clip(model.eval())


def build_promptkd(clip_model, teacher_clip, classnames, device):
    sizes, teacher_sizes = tower_sizes(clip_model), tower_sizes(teacher_clip)
    teacher_cfg = CN(dict(N_CTX_TEXT=4, N_CTX_VISION=4, CTX_INIT="a photo of a",
                           PROMPT_DEPTH_TEXT=min(9, teacher_sizes.text_layers),
                           PROMPT_DEPTH_VISION=min(9, teacher_sizes.vision_layers)))
    teacher = IVLPModel(teacher_cfg, classnames, copy.deepcopy(teacher_clip)).eval()
    promptkd_cfg = build_cfg().TRAINER.PROMPTKD
    promptkd_cfg.PROMPT_DEPTH_VISION = min(9, sizes.vision_layers)
    model = PromptKDModel(promptkd_cfg, copy.deepcopy(clip_model), teacher)
    for name, param in model.named_parameters():
        param.requires_grad_(is_student_state(name))
    return model.to(device)


def promptkd_loss(model, cached):
    """The trainer's step: teacher logits (no grad), student logits, KD_WEIGHT 1000, T 1."""
    cache = {}

    def text_features():
        if cached and "t" in cache:
            return cache["t"]
        with torch.no_grad():
            cache["t"] = normalize(model.teacher.encode_text())
        return cache["t"]

    def loss(images, labels):
        t = text_features()
        with torch.no_grad():
            teacher_logits = model.teacher.logit_scale.exp() * normalize(model.teacher.encode_image(images)) @ t.t()
        return distillation_loss(model(images, t), teacher_logits, 1.0, 1000.0)
    return loss


def build_maple(clip_model, classnames, device):
    cfg = build_cfg()
    cfg.DATASET.NAME = "ImageNet"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = min(9, *vars(tower_sizes(clip_model)).values())
    model = MaPLeModel(cfg, classnames, copy.deepcopy(clip_model))
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("prompt_learner."))
    return model.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--teacher", default="", help="teacher CLIP name or checkpoint (default: random ViT-L/14)")
    parser.add_argument("--classes", type=int, default=100, help="classes (PromptKD trains over all of them)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--images", type=int, default=500, help="evaluation images (batch 100)")
    args = parser.parse_args(argv)

    device, precision, clip_model = setup_backbone(args)
    teacher_clip = build_teacher_clip(args, precision)
    size = clip_model.visual.input_resolution
    torch.manual_seed(0)
    classnames = [f"class {i}" for i in range(args.classes)]

    def batches(batch_size):
        return [(torch.randn(batch_size, 3, size, size, device=device),
                 torch.randint(args.classes, (batch_size,), device=device)) for _ in range(args.steps)]

    test_batches = random_batches(clip_model, args.images, 100, device)
    print(f"device {device}, precision {precision.name}, {args.classes} classes, {args.steps} steps, "
          f"{args.images} test images (batch 100), student/MaPLe {backbone_label(args)}, teacher "
          f"{args.teacher or ('tiny random CLIP (embed 768)' if args.tiny else 'random ViT-L/14')}")
    maple = build_maple(clip_model, classnames, device)
    maple_train = time_train(maple, lambda x, y: F.cross_entropy(maple(x).float(), y), batches(4), device, precision,
                             warmup=1)
    maple_test = time_test(maple, test_batches, device, precision)
    del maple
    print(f"  MaPLe: {1000 * maple_train:9.1f} ms / train step (batch 4)   {maple_test:8.3f} s / evaluation", flush=True)
    promptkd = build_promptkd(clip_model, teacher_clip, classnames, device)
    kd_batches = batches(8)
    cached = time_train(promptkd, promptkd_loss(promptkd, cached=True), kd_batches, device, precision, warmup=1)
    recomputed = time_train(promptkd, promptkd_loss(promptkd, cached=False), kd_batches, device, precision, warmup=1)
    kd_test = time_test(promptkd, test_batches, device, precision)
    print(f"  PromptKD: {1000 * cached:9.1f} ms / train step (batch 8, cached teacher text), "
          f"{1000 * recomputed:9.1f} ms recomputed   {kd_test:8.3f} s / evaluation")
    print(f"PromptKD / MaPLe: train step {cached / maple_train:.2f}x, per training image "
          f"{cached / 8 / (maple_train / 4):.2f}x, evaluation {kd_test / maple_test:.2f}x")
    print(f"PromptKD teacher text recomputed every step / cached: train step {recomputed / cached:.2f}x")


if __name__ == "__main__":
    main()
