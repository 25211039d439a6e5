"""What every benchmark script shares: the CLIP it times, the device/precision flags, the timer.

The backbone is a randomly initialised CLIP (timings do not depend on the weight values):
ViT-B/16's architecture by default, `--tiny` for the tests' tiny CLIP; `--backbone` takes a
real CLIP name or checkpoint.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.clip_loading import clip, load_clip_to_cpu  # noqa: E402
from engine.precision import resolve_precision  # noqa: E402
from trainers.deep_prompting import tower_sizes  # noqa: E402
from trainers.prompting import normalize  # noqa: E402

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
TINY = dict(VIT_B16, image_resolution=32, vision_width=128, transformer_width=128, vision_layers=3,
            transformer_layers=3, transformer_heads=2, embed_dim=64)


def add_backbone_args(parser):
    """--backbone, --tiny, --prec and --device, the same in every script."""
    parser.add_argument("--backbone", default="", help="CLIP name or checkpoint (default: random ViT-B/16)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random CLIP (CPU smoke run)")
    parser.add_argument("--prec", default="fp16", choices=["fp16", "fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def setup_backbone(args):
    """(device, precision, clip_model prepared for that precision) from the parsed flags."""
    device = torch.device(args.device)
    precision = resolve_precision(args.prec, device)
    return device, precision, precision.prepare_clip(build_clip(args.backbone, args.tiny))


def backbone_label(args):
    return args.backbone or ("tiny random CLIP" if args.tiny else "random ViT-B/16")


def build_clip(backbone, tiny):
    if backbone:
        return load_clip_to_cpu(backbone)
    model = clip.model.CLIP(**(TINY if tiny else VIT_B16))
    clip.model.convert_weights(model)
    return model.eval()


def random_batches(clip_model, num_images, batch_size, device):
    size = clip_model.visual.input_resolution
    return [torch.randn(min(batch_size, num_images - i), 3, size, size, device=device)
            for i in range(0, num_images, batch_size)]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_eval(run_batch, batches, device):
    """Seconds for one full evaluation pass (after one warm-up pass)."""
    for images in batches[:1]:
        run_batch(images)
    synchronize(device)
    start = time.perf_counter()
    for images in batches:
        run_batch(images)
    synchronize(device)
    return time.perf_counter() - start


def eval_speed_parser(description):
    """The options of the evaluation-speed scripts: the backbone flags and the evaluated workload."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    return parser


def time_cached_eval(model, batches, device):
    """Seconds for one evaluation with the text features computed once (as the trainer does) and reused."""
    start = time.perf_counter()
    text = model.encode_text()
    return time.perf_counter() - start + time_eval(lambda x: model(x, text_features=text), batches, device)


def time_train(model, loss_fn, batches, device, precision, warmup=2):
    """Seconds per training step (forward, `loss_fn(images, labels)`, backward, SGD step) over
    `batches` of (images, labels), after `warmup` untimed steps."""
    model.train()
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step(images, labels):
        with precision.autocast():
            loss = loss_fn(images, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    for images, labels in batches[:warmup]:
        step(images, labels)
    synchronize(device)
    start = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    synchronize(device)
    return (time.perf_counter() - start) / len(batches)


def time_test(model, batches, device, precision):
    """Seconds for one evaluation pass, the (normalised) text features computed once per evaluation
    where they do not depend on the image, as the trainer does; image-guided text runs per batch."""
    model.eval()
    with torch.no_grad(), precision.autocast():
        start = time.perf_counter()
        if getattr(model, "igt", False):
            run = model
        else:
            text = normalize(model.encode_text())
            run = lambda x: model(x, text_features=text)  # noqa: E731
        return time.perf_counter() - start + time_eval(run, batches, device)


class BaseNewWorkload:
    """The workload of the method-vs-MaPLe cost scripts: batch-4 training steps on `--base-classes`,
    a batch-100 evaluation of `--images` over `--classes` other classes, prompt depth 9 where the
    backbone has the layers. Parses the command line and prints the setting."""

    def __init__(self, doc, argv=None):
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_backbone_args(parser)
        parser.add_argument("--base-classes", type=int, default=50, help="classes seen in training")
        parser.add_argument("--classes", type=int, default=50, help="classes at evaluation")
        parser.add_argument("--steps", type=int, default=20, help="timed training steps (batch 4)")
        parser.add_argument("--images", type=int, default=500, help="evaluation images (batch 100)")
        args = self.args = parser.parse_args(argv)
        self.device, self.precision, self.clip_model = setup_backbone(args)
        sizes = tower_sizes(self.clip_model)
        self.depth = min(9, sizes.text_layers, sizes.vision_layers)
        size = self.clip_model.visual.input_resolution
        torch.manual_seed(0)
        self.train_batches = [(torch.randn(4, 3, size, size, device=self.device),
                               torch.randint(args.base_classes, (4,), device=self.device)) for _ in range(args.steps)]
        self.test_batches = random_batches(self.clip_model, args.images, 100, self.device)
        self.base = [f"class {i}" for i in range(args.base_classes)]
        self.new = [f"other class {i}" for i in range(args.classes)]
        print(f"device {self.device}, precision {self.precision.name}, depth {self.depth}, {args.base_classes} "
              f"training classes (batch 4, {args.steps} steps), {args.classes} test classes ({args.images} images, "
              f"batch 100), backbone {backbone_label(args)}")
