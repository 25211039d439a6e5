"""Training speed: shared-prefix text encoding on / off, and persistent vs per-epoch loader workers.

Prints, from one run on the same CLIP, data and device:
  step        seconds per training step (the trainer's own loss, backward, optimizer step; the
              fastest of --repeats after a warm-up) and its peak memory, with the text encoder's
              plain path ("plain", as before shared prefixes) and the shared-prefix path ("shared"),
              for each method at each class count, and shared / plain;
  text tower  the same for the text tower alone (encode_text, forward and backward), for methods
              whose text features do not depend on the image;
  loader      wall time of each pass over a 16-shot, 50-class train set (800 synthetic JPEGs, the
              CoOp train transforms and batch size) with workers started every epoch vs persistent.
Methods are registry names with their paper configs (CoOp with 16 and with 4 context tokens);
methods not registered in this checkout are skipped with a note. Class names are random phrases of
1-4 common words, like dataset class names. Peak memory: on CUDA, torch.cuda.max_memory_allocated
above what was allocated before the step; on a CPU, the peak of live tensor memory at operator
granularity from the torch profiler (both exclude the model's weights).
The backbone is a randomly initialised CLIP (timings do not depend on the weight values):
ViT-B/16's architecture by default, `--tiny` for the tests' tiny CLIP; `--backbone` takes a real one.

    python benchmarks/train_speed.py [--tiny] [--device cuda] [--classes 100 1000] [--methods ...]
        [--repeats 3] [--workers 8] [--loader-epochs 3] [--no-loader] [--threads 1 --cpu-time]
"""
import argparse
import os
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

# common first: it puts the repository root on sys.path
from common import add_backbone_args, backbone_label, setup_backbone, synchronize  # noqa: I001
import trainers  # noqa: F401,E402  (registers every trainer and config hook)
from engine.config import build_cfg, merge_from_file, merge_from_list
from engine.dataset import Datum
from engine.loader import build_data_loader, build_transform
from engine.optim import build_optimizer
from engine.registry import TRAINERS
from engine.trainer import Batch
from scripts.methods import METHODS, REPO, default_config_file
from trainers.deep_prompting import tower_sizes
from trainers.prompting import use_shared_prefix

COOP_CONFIGS = os.path.join(REPO, "configs", "trainers", "CoOp")
# (row label, trainer name, paper config file or None for the METHODS entry, extra KEY VALUE options)
ROWS = [
    ("CoOp 16 ctx", "CoOp", os.path.join(COOP_CONFIGS, "vit_b16_ep50.yaml"), ()),  # N_CTX 16, random init
    ("CoOp 4 ctx", "CoOp", os.path.join(COOP_CONFIGS, "vit_b16_ctxv1.yaml"), ()),  # "a photo of a"
    ("MaPLe", "MaPLe", None, ()),
    ("PromptSRC", "PromptSRC", None, ()),
    ("DGPrompt", "DGPrompt", None, ()),
]
WORDS = ("red white great spotted tabby golden snow mountain river desert sea garden house field night "
         "shark cat dog fox owl hawk beetle lizard maple oak tulip car truck bridge tower boat chair lamp "
         "clock piano guitar bottle basket helmet jersey bakery volcano canoe crane sandal parachute").split()
SHOTS, LOADER_CLASSES = 16, 50


def class_names(n, seed=0):
    """`n` phrases of 1-4 words (1-8 BPE tokens), standing in for a dataset's class names."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 2, 2, 3, 4)))) for _ in range(n)]


def row_config(name, config_file, opts, clip_model):
    cfg = build_cfg()
    cfg.DATASET.NAME = "ImageNet"  # template "a photo of a {}." for methods with hand-crafted anchors
    merge_from_file(cfg, config_file or default_config_file(name, METHODS[name]))
    merge_from_list(cfg, list(opts))
    sizes = tower_sizes(clip_model)
    layers = min(sizes.text_layers, sizes.vision_layers)
    node = cfg.TRAINER[TRAINERS.get(name).config_node]
    for key, value in node.items():  # paper depths (9) capped to a smaller backbone's blocks (--tiny)
        if "DEPTH" in key and isinstance(value, int):
            node[key] = min(value, layers)
    return cfg


def build_trainer(name, cfg, clip_model, classnames, device):
    """The trainer's own model, trainable flags and loss, without its data loaders (random images here)."""
    trainer = object.__new__(TRAINERS.get(name))
    trainer.cfg, trainer.device = cfg, device
    trainer.epoch, trainer.batch_idx, trainer.num_batches, trainer.max_epoch = 0, 0, 1, cfg.OPTIM.MAX_EPOCH
    model = trainer.build_model(clip_model, classnames)
    for param_name, param in model.named_parameters():
        param.requires_grad_(trainer.is_trainable(param_name))
    trainer.model = model.to(device)
    trainer.optim = build_optimizer(trainer.model.parameters(), cfg.OPTIM)
    return trainer


def peak_memory(run, device):
    """Peak bytes allocated while `run()` runs, above what was allocated before."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def seconds(run, device, repeats, clock=time.perf_counter):
    """Fastest of `repeats` calls after one warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        run()
        synchronize(device)
        best = min(best, clock() - start)
    return best


def measure_row(trainer, images, labels, precision, device, repeats, clock):
    """{(part, path): (seconds, peak bytes)} for part in step / text, path in plain / shared."""
    model = trainer.model

    def step():
        model.train()
        with precision.autocast():
            loss, _ = trainer.compute_loss(Batch(images, labels, []))
        trainer.optim.zero_grad()
        loss.backward()
        trainer.optim.step()

    def text_tower():
        model.train()
        model.zero_grad()
        with precision.autocast():
            features = model.encode_text()
        features.float().sum().backward()

    model.eval()
    with torch.no_grad():  # the engine's own test: are the text features the same for every image?
        image_independent = trainer.cached_text_features() is not None
    parts = {"step": step, "text": text_tower} if image_independent else {"step": step}
    results = {}
    for shared in (False, True):
        use_shared_prefix(model, shared)
        path = "shared" if shared else "plain"
        for part, run in parts.items():
            results[part, path] = seconds(run, device, repeats, clock), peak_memory(run, device)
    return results


def benchmark_steps(args, device, precision, clip_model):
    """Print step / text-tower time and memory per row and class count; returns the ratios by (label, C)."""
    ratios = {}
    print(f"{'method':<12} {'classes':>7} {'batch':>5}  {'part':<10} {'plain s':>8} {'shared s':>9} {'ratio':>6}  "
          f"{'plain MiB':>10} {'shared MiB':>11} {'ratio':>6}")
    for label, name, config_file, opts in ROWS:
        if label not in args.methods.split(","):
            continue
        if name not in TRAINERS:
            print(f"{label:<12} skipped: trainer {name} is not registered in this checkout")
            continue
        cfg = row_config(name, config_file, opts, clip_model)
        batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        size = clip_model.visual.input_resolution
        for n_cls in args.classes:
            torch.manual_seed(0)
            trainer = build_trainer(name, cfg, clip_model, class_names(n_cls), device)
            images = torch.randn(batch, 3, size, size, device=device)
            labels = torch.randint(n_cls, (batch,), device=device)
            results = measure_row(trainer, images, labels, precision, device, args.repeats,
                                  time.process_time if args.cpu_time else time.perf_counter)
            for part in ("step", "text"):
                if (part, "plain") not in results:
                    continue
                (t_plain, m_plain), (t_shared, m_shared) = results[part, "plain"], results[part, "shared"]
                ratios[label, n_cls, part] = (t_shared / t_plain, m_shared / m_plain)
                print(f"{label:<12} {n_cls:>7} {batch:>5}  {'text tower' if part == 'text' else part:<10} "
                      f"{t_plain:>8.3f} {t_shared:>9.3f} {t_shared / t_plain:>6.2f}  {m_plain / 2**20:>10.1f} "
                      f"{m_shared / 2**20:>11.1f} {m_shared / m_plain:>6.2f}")
            del trainer
    return ratios


def write_images(directory, n_classes, shots, size):
    """`n_classes` x `shots` smooth random JPEGs of `size` (width, height), like resized photos."""
    rng = np.random.default_rng(0)
    records = []
    for label in range(n_classes):
        for shot in range(shots):
            path = os.path.join(directory, f"{label}_{shot}.jpg")
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            coarse.resize(size, Image.BICUBIC).save(path, quality=90)
            records.append(Datum(path, label))
    return records


def benchmark_loader(args, device, clip_model):
    """Seconds per pass over a 16-shot, 50-class train set, workers per epoch vs persistent."""
    cfg = build_cfg()
    merge_from_file(cfg, os.path.join(COOP_CONFIGS, "vit_b16_ep50.yaml"))  # CoOp's transforms and batch 32
    cfg.INPUT.SIZE = (clip_model.visual.input_resolution,) * 2
    cfg.DATALOADER.NUM_WORKERS = args.workers
    source_size = (64, 48) if args.tiny else (500, 375)
    with tempfile.TemporaryDirectory() as directory:
        records = write_images(directory, LOADER_CLASSES, SHOTS, source_size)
        epochs = {}
        for persistent in (False, True):
            cfg.DATALOADER.PERSISTENT_WORKERS = persistent
            loader = build_data_loader(cfg, records, cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                                       build_transform(cfg, is_train=True), True, device.type == "cuda")
            times = []
            for _ in range(args.loader_epochs):
                start = time.perf_counter()
                for batch in loader:
                    batch["img"].to(device, non_blocking=True)
                synchronize(device)
                times.append(time.perf_counter() - start)
            epochs[persistent] = times
            del loader
    print(f"loader: {len(records)} images ({LOADER_CLASSES} classes x {SHOTS} shots, {source_size[0]}x{source_size[1]} "
          f"JPEG), batch {cfg.DATALOADER.TRAIN_X.BATCH_SIZE}, {args.workers} workers, {args.loader_epochs} epochs")
    for persistent, times in epochs.items():
        print(f"  {'persistent' if persistent else 'per-epoch':>10} workers: epochs " +
              " ".join(f"{t:.3f}" for t in times) + " s")
    later = slice(1, None) if args.loader_epochs > 1 else slice(None)
    mean = {p: sum(t[later]) / len(t[later]) for p, t in epochs.items()}
    print(f"  persistent / per-epoch, mean epoch after the first: {mean[True] / mean[False]:.2f} "
          f"({mean[True]:.3f} s vs {mean[False]:.3f} s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--methods", default=",".join(label for label, *_ in ROWS),
                        help="comma-separated rows (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (the fastest counts)")
    parser.add_argument("--workers", type=int, default=8, help="loader workers (the configs' NUM_WORKERS)")
    parser.add_argument("--loader-epochs", type=int, default=3)
    parser.add_argument("--no-loader", action="store_true", help="skip the loader benchmark")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice; 1 gives steadier timings on a busy CPU)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps by this process's CPU time, not wall time (a CPU shared with other jobs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device, precision, clip_model = setup_backbone(args)
    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch profiler, live tensors"
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"device {device}, precision {precision.name}, backbone {backbone_label(args)}, "
          f"{torch.get_num_threads()} CPU threads, steps timed by {clock}, peak memory: {memory}")
    ratios = benchmark_steps(args, device, precision, clip_model)
    goals = [("CoOp 16 ctx", 100, "step", 0, "training step time at 100 classes"),
             ("CoOp 16 ctx", 1000, "text", 1, "text-tower peak memory at 1000 classes")]
    for label, n_cls, part, index, what in goals:
        if (label, n_cls, part) in ratios:
            print(f"goal: {label} {what}, shared / plain <= 0.40: {ratios[label, n_cls, part][index]:.2f}")
    if not args.no_loader:
        benchmark_loader(args, device, clip_model)


if __name__ == "__main__":
    main()
