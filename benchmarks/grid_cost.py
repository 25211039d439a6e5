"""Cost of the full base-to-new grid (11 datasets x 3 seeds, 16 shots) per method.

For every method the script builds its model from the method's paper config (scripts/methods.py)
on a randomly initialised CLIP and measures, on this device and with this precision, one training
step (forward, the method's loss, backward, SGD step) and one evaluation batch at a few class
counts C and batch sizes N, counting FLOPs (torch's FLOP formulas for matmuls, convolutions and attention)
and seconds. Both are fitted by cost(C, N) = a + b*C + d*N + e*C*N, which is exact for FLOPs
(the text side grows with C, the image side with N, image-guided text prompts with C*N; the
timings keep the C*N term only where the FLOPs have it), then summed over every step and test
batch of the grid:
  steps     = epochs x floor(16 x base classes / batch) per dataset (drop_last as in training);
  test      = the base and the new half of each test set (split in proportion to the classes),
              text features encoded once per evaluation where the method allows it.
PromptKD trains on the full train split of every class (0 shots, no labels): its steps are
epochs x floor(train images / batch) at all classes, each with the frozen teacher's image forward
(a random ViT-L/14-architecture teacher; its text features computed once per run, as the trainer
caches them). PromptSRC's step includes its zero-shot image forward; its zero-shot text targets
(60 templates per base class) are a once-per-run cost added to training.
DPC rows are stage 2 only (stage 1 is the backbone's own row; DPC_CoOp's stage 1 is the
"CoOp (DPC stage 1)" row): a step is the backbone's step on the enlarged batch, taken as
N = min(base classes, 4 x (1 + TOPK)) images (the non-repeat rule keeps classes distinct), plus
the query forward of the 4 anchors, whose text features are cached (DPC_PromptKD: the teacher's
image forward). Stage 2's loss compares the logits of the enlarged batch (its FLOPs are those of
cross-entropy on them); DPC_PromptKD's text side is the teacher's text tower with trainable prompts.

Prints per method: training steps, PFLOPs (train, test), the measured device-hours and the hours
at --tflops sustained throughput. Measured hours are the estimate when run on the GPU the grid
will run on (default ViT-B/16 architecture); on a CPU, or with --tiny, only the FLOPs mean much.

    python benchmarks/grid_cost.py [--methods CoOp,MaPLe] [--classes 8 64] [--batch 4 32] [--tflops 100]
"""
import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# common first: it puts the repository root on sys.path
from common import add_backbone_args, backbone_label, setup_backbone, synchronize  # noqa: I001
from cost_promptkd import build_teacher_clip
import trainers  # noqa: F401,E402  (registers every config hook)
from engine.config import build_cfg, merge_from_file, merge_from_list
from scripts.methods import PAPER_DATASETS, DPC_STAGE1, METHODS, SEEDS, config_path, default_config_file
from trainers.coop import CoOpModel
from trainers.deep_prompting import tower_sizes
from trainers.dgprompt import DGPromptModel
from trainers.dpc import DPC_PromptKD
from trainers.dpl import DPLModel
from trainers.ivlp import IVLPModel, is_ivlp_trainable
from trainers.kgcoop import KgCoOpModel
from trainers.maple import MaPLeModel
from trainers.promptkd import PromptKDModel, distillation_loss, is_student_state
from trainers.prompting import normalize
from trainers.promptsrc import PROMPTSRC_TEMPLATES, PromptSRCModel

SHOTS = 16
MODELS = {"CoOp": CoOpModel, "KgCoOp": KgCoOpModel, "MaPLe": MaPLeModel, "DPL": DPLModel, "DGPrompt": DGPromptModel,
          "IVLP": IVLPModel, "PromptSRC": PromptSRCModel, "PromptKD": PromptKDModel}
# Images in each dataset's full train split (CoOp's split files; ImageNet: its whole train set), the
# training set of a 0-shot method (PromptKD).
TRAIN_IMAGES = {"imagenet": 1281167, "caltech101": 4128, "oxford_pets": 2944, "stanford_cars": 6509,
                "oxford_flowers": 4093, "food101": 50500, "fgvc_aircraft": 3334, "sun397": 15880, "dtd": 2820,
                "eurosat": 13500, "ucf101": 7639}
# DPC_CoOp's stage 1 is not the CoOp row: the DPC repo's batch-4, 10-epoch CoOp with 4 tokens.
_COOP_STAGE1 = DPC_STAGE1["CoOp"]
EXTRA_ROWS = {"CoOp (DPC stage 1)": ("CoOp", config_path("CoOp", METHODS["CoOp"], _COOP_STAGE1.config)[1],
                                     (*_COOP_STAGE1.config_opts, *_COOP_STAGE1.opts))}


def method_config(name, dataset_name):
    """(backbone model class, merged cfg, is_dpc) for a METHODS entry or an EXTRA_ROWS entry."""
    cfg = build_cfg()
    cfg.DATASET.NAME = dataset_name
    if name in EXTRA_ROWS:
        backbone, path, opts = EXTRA_ROWS[name]
    else:
        entry = METHODS[name]
        backbone = name.removeprefix("DPC_")
        path, opts = default_config_file(name, entry), entry.opts
    merge_from_file(cfg, path)
    merge_from_list(cfg, list(opts))
    return MODELS[backbone], cfg, name.startswith("DPC_")


def cap_prompt_depths(cfg, clip_model):
    """Deep-prompt depths of the paper configs (9) capped to a smaller backbone's layers (--tiny)."""
    sizes = tower_sizes(clip_model)
    layers = min(sizes.text_layers, sizes.vision_layers)
    for node, key in (("MAPLE", "PROMPT_DEPTH"), ("DPL", "DEPTH_V"), ("DPL", "DEPTH_T"), ("DGPROMPT", "DEPTH"),
                      *((node, f"PROMPT_DEPTH_{tower}") for node in ("IVLP", "PROMPTSRC", "PROMPTKD")
                        for tower in ("TEXT", "VISION"))):
        cfg.TRAINER[node][key] = min(cfg.TRAINER[node][key], layers)


def build_model(model_class, cfg, classnames, clip_model, teacher_clip, dpc):
    """(model, is_trainable(name)) as the method's trainer builds it. IVLP-style models attach their deep
    prompts to CLIP's blocks, so each gets its own copy of the CLIP."""
    if model_class in (IVLPModel, PromptSRCModel):
        node = cfg.TRAINER.PROMPTSRC if model_class is PromptSRCModel else cfg.TRAINER.IVLP
        return model_class(node, classnames, copy.deepcopy(clip_model)), is_ivlp_trainable
    if model_class is PromptKDModel:
        return build_promptkd(cfg, classnames, clip_model, teacher_clip), \
            (lambda n: is_student_state(n) or DPC_PromptKD.is_text_prompt(n)) if dpc else is_student_state
    return model_class(cfg, classnames, clip_model), lambda n: n.startswith("prompt_learner.")


def build_promptkd(cfg, classnames, clip_model, teacher_clip):
    """The student of the config on `clip_model` with a PromptSRC-style teacher (4+4 tokens at depth 9,
    capped by its layers) on `teacher_clip`, as a trained teacher file is loaded."""
    promptkd_cfg, teacher_sizes = cfg.TRAINER.PROMPTKD, tower_sizes(teacher_clip)
    teacher_cfg = promptkd_cfg.clone()
    teacher_cfg.PROMPT_DEPTH_TEXT = min(9, teacher_sizes.text_layers)
    teacher_cfg.PROMPT_DEPTH_VISION = min(9, teacher_sizes.vision_layers)
    teacher = IVLPModel(teacher_cfg, classnames, copy.deepcopy(teacher_clip)).eval()
    return PromptKDModel(promptkd_cfg, copy.deepcopy(clip_model), teacher)


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the ops torch has formulas for. (FlopCounterMode's per-module tracker
    trips over the prompt views some methods pass between blocks; the total is all we need.)"""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def measure(run, device):
    """(FLOPs, seconds) of `run()`: FLOPs counted on one call, seconds the best of two after a warm-up."""
    with FlopCount() as counter:
        run()
    seconds = float("inf")
    for _ in range(2):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds = min(seconds, time.perf_counter() - start)
    return counter.total, seconds


def fit_bilinear(points, with_product=True):
    """Least-squares a, b, d (, e) of cost = a + b*C + d*N (+ e*C*N) from {(C, N): cost}."""
    rows = torch.tensor([[1.0, c, n, c * n][:4 if with_product else 3] for c, n in points], dtype=torch.float64)
    values = torch.tensor(list(points.values()), dtype=torch.float64).unsqueeze(1)
    coef = torch.linalg.lstsq(rows, values).solution.squeeze(1).tolist() + [0.0]
    return lambda c, n: max(0.0, coef[0] + coef[1] * c + coef[2] * n + coef[3] * c * n)


def fit_cost(measured):
    """(FLOPs fit, seconds fit) from {(C, N): (flops, seconds)}. FLOPs are exactly bilinear; the
    timings are noisy, so their C*N term is kept only where the FLOPs have one (image-guided text
    prompts), instead of letting noise in a tiny coefficient blow up at 500 classes x 128 images."""
    flops = {k: v[0] for k, v in measured.items()}
    largest = max(measured)
    with_product = fit_bilinear(flops)(*largest) - fit_bilinear(flops, with_product=False)(*largest) \
        > 0.05 * flops[largest]
    return fit_bilinear(flops), fit_bilinear({k: v[1] for k, v in measured.items()}, with_product)


def fit_linear(points):
    """cost = a + b*C through the two measured points (or constant from one)."""
    (c1, y1), (c2, y2) = sorted(points.items())
    slope = (y2 - y1) / (c2 - c1)
    return lambda c: max(0.0, y1 + slope * (c - c1))


class MethodCost:
    """Fitted step, text-encoding and test-batch costs of one method, in FLOPs and seconds."""

    def __init__(self, name, clip_model, teacher_clip, device, precision, class_counts, batch_sizes):
        model_class, self.cfg, self.dpc = method_config(name, "ImageNet")  # template "a photo of a {}."
        cap_prompt_depths(self.cfg, clip_model)
        self.name = name
        size = clip_model.visual.input_resolution
        step, text, test, query, once = {}, {}, {}, {}, {}
        for c in class_counts:
            classnames = [f"class {i}" for i in range(c)]
            model, trainable = build_model(model_class, self.cfg, classnames, clip_model, teacher_clip, self.dpc)
            model = model.to(device)
            for param_name, param in model.named_parameters():
                param.requires_grad_(trainable(param_name))
            self.igt = bool(getattr(model, "igt", False))
            once[c] = self.prepare(model, precision, device)
            optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            for n in batch_sizes:
                images = torch.randn(n, 3, size, size, device=device)
                labels = torch.randint(c, (n,), device=device)
                step[c, n] = measure(lambda: self.train_step(model, optim, images, labels, precision), device)
                test[c, n] = measure(lambda: self.test_batch(model, images, precision), device)
                query[c, n] = measure(lambda: self.query_batch(model, images, precision), device) \
                    if self.dpc and isinstance(model, PromptKDModel) else test[c, n]
            text[c] = (0, 0.0) if self.igt else measure(lambda: self.encode_text(model, precision), device)
        self.step = fit_cost(step)
        self.test = fit_cost(test)
        self.query = fit_cost(query)
        self.text = [fit_linear({k: v[i] for k, v in text.items()}) for i in (0, 1)]
        self.once = [fit_linear({k: v[i] for k, v in once.items()}) for i in (0, 1)]

    def prepare(self, model, precision, device):
        """(FLOPs, seconds) of what a run computes once before its first step: PromptSRC's zero-shot text
        targets (60 templates per class; one template measured, the cost is linear in the templates) and
        PromptKD's teacher text features, which the step then reads from a cache."""
        self.teacher_text = None
        if isinstance(model, PromptSRCModel) and not self.dpc:
            flops, seconds = measure(lambda: model.zero_shot_text_features(PROMPTSRC_TEMPLATES[:1]), device)
            model.fixed_embeddings = model.zero_shot_text_features()
            return flops * len(PROMPTSRC_TEMPLATES), seconds * len(PROMPTSRC_TEMPLATES)
        if isinstance(model, PromptKDModel) and not self.dpc:
            def encode():
                with torch.no_grad(), precision.autocast():
                    self.teacher_text = normalize(model.teacher.encode_text())
            return measure(encode, device)
        return 0, 0.0

    def loss(self, model, images, labels):
        if self.dpc:  # stage 2: a contrastive loss on the backbone's logits of the enlarged batch
            return F.cross_entropy(model(images).float(), labels)
        if isinstance(model, DGPromptModel):
            return model.loss(images, labels)[0]
        if isinstance(model, PromptSRCModel):
            return model.loss(images, labels)
        if isinstance(model, PromptKDModel):  # the frozen teacher's logits, then the student's
            with torch.no_grad():
                teacher_logits = model.teacher.logit_scale.exp() \
                    * normalize(model.teacher.encode_image(images)) @ self.teacher_text.t()
            student_logits = model(images, self.teacher_text)
            promptkd_cfg = self.cfg.TRAINER.PROMPTKD
            return distillation_loss(student_logits, teacher_logits, promptkd_cfg.TEMPERATURE, promptkd_cfg.KD_WEIGHT)
        return F.cross_entropy(model(images).float(), labels)

    def query_batch(self, model, images, precision):
        """DPC_PromptKD's hard-negative query: the frozen teacher's image features (its text cached)."""
        with torch.no_grad(), precision.autocast():
            model.teacher.encode_image(images)

    def train_step(self, model, optim, images, labels, precision):
        model.train()
        with precision.autocast():
            loss = self.loss(model, images, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    def encode_text(self, model, precision):
        model.eval()
        with torch.no_grad(), precision.autocast():
            model.encode_text()

    def test_batch(self, model, images, precision):
        """One batch with the text features already computed (image-guided text: all of it per batch)."""
        model.eval()
        with torch.no_grad(), precision.autocast():
            if self.igt:
                model(images)
            else:
                model.encode_image(images)  # the logits against cached text are negligible

    def grid(self):
        """{'steps', 'train', 'test'}: totals over the grid, each cost a (FLOPs, seconds) pair."""
        cfg = self.cfg
        epochs, batch = cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        test_batch = cfg.DATALOADER.TEST.BATCH_SIZE
        totals = {"steps": 0, "train": [0.0, 0.0], "test": [0.0, 0.0]}
        entry = METHODS.get(self.name)
        unlabelled = entry is not None and entry.shots == 0  # PromptKD: every train image of every class
        for stem, (_, n_cls, n_test) in PAPER_DATASETS.items():
            base = math.ceil(n_cls / 2)
            train_classes = n_cls if unlabelled else base
            images = TRAIN_IMAGES[stem] if unlabelled else SHOTS * base
            run_epochs = epochs
            if stem == "imagenet" and entry and entry.imagenet_config:
                run_epochs = 50  # CoOp's ImageNet config (vit_b16_ep50_ctxv1)
            steps = run_epochs * (images // batch if images >= batch else 1)
            n = min(base, 4 * (1 + cfg.TRAINER.DPC.TOPK)) if self.dpc else batch
            totals["steps"] += steps * len(SEEDS)
            for i in (0, 1):
                per_step = self.step[i](train_classes, n) + (self.query[i](base, batch) if self.dpc else 0.0)
                totals["train"][i] += len(SEEDS) * (steps * per_step + self.once[i](train_classes))
                for classes in (base, n_cls - base):
                    test_images = n_test * classes / n_cls
                    batches = test_images / test_batch
                    totals["test"][i] += len(SEEDS) * (self.text[i](classes) + batches * self.test[i](classes, test_batch))
        return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    default_methods = [m for m, entry in METHODS.items() if not entry.eval_only] + list(EXTRA_ROWS)
    parser.add_argument("--methods", default=",".join(default_methods), help="comma-separated rows")
    parser.add_argument("--teacher", default="", help="PromptKD's teacher CLIP name or checkpoint "
                        "(default: random ViT-L/14; --tiny: a tiny one)")
    parser.add_argument("--classes", type=int, nargs=2, default=[8, 64], help="two class counts to measure")
    parser.add_argument("--batch", type=int, nargs=2, default=[4, 32], help="two batch sizes to measure (PromptKD: 2 or more, its projector has BatchNorm)")
    parser.add_argument("--tflops", type=float, default=100.0,
                        help="sustained TFLOP/s for the FLOP-based hours (default 100)")
    args = parser.parse_args(argv)

    device, precision, clip_model = setup_backbone(args)
    names = args.methods.split(",")
    teacher_clip = build_teacher_clip(args, precision) if any(n.endswith("PromptKD") for n in names) else None
    torch.manual_seed(0)
    print(f"device {device}, precision {precision.name}, backbone {backbone_label(args)}; measured at "
          f"C = {args.classes}, N = {args.batch}; grid: {len(PAPER_DATASETS)} datasets x {len(SEEDS)} seeds, {SHOTS} shots")
    header = (f"{'method':<34} {'steps':>9} {'train PFLOP':>12} {'test PFLOP':>11} "
              f"{'measured h':>11} {f'h @ {args.tflops:g} TFLOP/s':>18}")
    print(header)
    for name in names:
        cost = MethodCost(name, clip_model, teacher_clip, device, precision, args.classes, args.batch)
        grid = cost.grid()
        flops = grid["train"][0] + grid["test"][0]
        seconds = grid["train"][1] + grid["test"][1]
        label = (METHODS[name].label or name) if name in METHODS else name
        print(f"{label:<34} {grid['steps']:>9,} {grid['train'][0] / 1e15:>12.1f} {grid['test'][0] / 1e15:>11.1f} "
              f"{seconds / 3600:>11.1f} {flops / (args.tflops * 1e12) / 3600:>18.1f}")


if __name__ == "__main__":
    main()
