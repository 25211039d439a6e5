"""DPC: Dual-Prompt Collaboration for tuning vision-language models (Li et al., CVPR 2025, arXiv 2503.13443).

A plug-in on an already tuned prompt-learning backbone. Stage 1 is the backbone's own run
(`CoOp`, `KgCoOp`, `MaPLe`, ...), giving the tuned prompt P. Stage 2 (this file) clones P into
a parallel prompt and tunes only that, on the same base-class few-shot data, with the Dynamic
Hard Negative Optimizer: each image is contrasted with images and texts of the base classes the
frozen P confuses it with most (symmetric image-text contrastive loss). At inference,
weighting-decoupling gives the base classes the tuned prompt and the new classes (ω_new = 0)
the backbone's P, so new-class accuracy is the backbone's.

Written once as `DPCMixin`; `class DPC_CoOp(DPCMixin, CoOp)` applies it to a backbone, and
"the prompt" is whatever that backbone trains (its `trainable` parameters). The official code
calls DPC "SPLE"; its `SPLE.*` keys are accepted. Spec: methods/dpc.md. Deviations: README.
"""
import contextlib
import json
import os
import random

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.checkpoint import CHECKPOINT_PREFIX, checkpoint_epochs, load_checkpoint
from engine.config import add_key_aliases
from engine.data import read_image
from engine.io import atomic_write_json
from engine.errors import CheckpointError, ConfigError, MissingFileError
from engine.registry import TRAINERS
from engine.trainer import checkpoint_writer
from trainers.coop import CoOp
from trainers.kgcoop import KgCoOp
from trainers.maple import MaPLe


def add_dpc_config(cfg):
    cfg.TRAINER.DPC = CN()
    cfg.TRAINER.DPC.BACKBONE_DIR = ""              # stage-1 run directory (holds <checkpoint folder>/model.pth.tar-E)
    cfg.TRAINER.DPC.BACKBONE_EPOCH = -1            # stage-1 checkpoint epoch; -1 = the latest one
    cfg.TRAINER.DPC.WEIGHT_BASE = 0.2              # ω_base in (0, 1]; released code: θ's gradient × 1/ω_base
    cfg.TRAINER.DPC.WEIGHT_NEW = 0.0               # ω_new: new classes use ω_new·Q + (1 − ω_new)·P
    cfg.TRAINER.DPC.BASE_PROMPT = "trained"        # trained: Q (released code) | mixed: ω_base·Q + (1 − ω_base)·P
    cfg.TRAINER.DPC.PARAMETERIZATION = "released"  # released: Q = θ | frozen_p: Q = P + (θ − P)/ω_base
    cfg.TRAINER.DPC.TOPK = 8                       # hard-negative classes per anchor (clamped to the base classes)
    cfg.TRAINER.DPC.NON_REPEAT = True              # a class is a negative (or anchor) once per batch; False: per anchor
    cfg.TRAINER.DPC.STRICT_CAP = False             # cap candidates at K − 1 (the reference's cap acts only at K = 1)
    cfg.TRAINER.DPC.FALLBACK = "reference"         # reference: randint(1, C − 2) loop | fixed: 2 unused classes
    cfg.TRAINER.DPC.DEDUP_ANCHORS = False          # drop anchors repeating a class of the batch (reference keeps)
    cfg.TRAINER.DPC.LIBRARY_SOURCE = "full_train"  # negatives from: full_train (train split) | fewshot (the shots)
    cfg.TRAINER.DPC.PIC_LIB = ""                   # an official SPLE_<DATASET>.json; overrides LIBRARY_SOURCE
    cfg.TRAINER.DPC.WRITE_PIC_LIB = ""             # folder to write the library to as SPLE_<DATASET>.json
    cfg.TRAINER.DPC.ADD_BACKBONE_LOSS = False      # add the backbone's own training loss on the batch to L_CL


def _converse_only(value):
    if "converse" not in str(value):
        raise ConfigError(f"SPLE.STACK.MODE {value!r}: only DPC's 'converse' mode is implemented (dpc.md §3.5)")
    return []


def _clone_init_only(value):
    if str(value) != "True":
        raise ConfigError("SPLE.SPLE_TRAINER.SPLE_INIT False is not supported: the parallel prompt starts at P")
    return []


def _unused(value):
    return []


# The official `SPLE.*` keys (dpc.md §7.1). Keys the reference declares but never reads are accepted and dropped.
add_key_aliases({
    "SPLE.BACK_CKPT_PATH": "TRAINER.DPC.BACKBONE_DIR",
    "SPLE.BACK_CKPT_EPOCH": "TRAINER.DPC.BACKBONE_EPOCH",
    "SPLE.INFER_TOPK": "TRAINER.DPC.TOPK",
    "SPLE.INFER_NONREPEAT": "TRAINER.DPC.NON_REPEAT",  # the reference ignores it (always on); we honour it
    "SPLE.PIC_LIB": "TRAINER.DPC.PIC_LIB",
    "SPLE.STACK.WEIGHT": "TRAINER.DPC.WEIGHT_BASE",
    "SPLE.STACK.WEIGHT_FOR_NEW": "TRAINER.DPC.WEIGHT_NEW",
    "SPLE.STACK.MODE": _converse_only,
    "SPLE.SPLE_TRAINER.SPLE_INIT": _clone_init_only,
    **dict.fromkeys(("SPLE.LOSS_KD_WEIGHT", "SPLE.KD_INFER",
                     "SPLE.SPLE_TRAINER.SPLE_BASE_TRAIN", "SPLE.STACK.LOOP_DEPTH"), _unused),
})

_CHOICES = {"BASE_PROMPT": ("trained", "mixed"), "PARAMETERIZATION": ("released", "frozen_p"),
            "FALLBACK": ("reference", "fixed"), "LIBRARY_SOURCE": ("full_train", "fewshot")}


# ----------------------------------------------------------------------------------
# Picture library (dpc.md §5): class name -> image paths, per-class file order kept
# ----------------------------------------------------------------------------------

def group_by_class(records):
    """{classname: [label, [impath, ...]]}, classes in first-appearance order, files in list order."""
    library = {}
    for item in records:
        library.setdefault(item.classname, [item.label, []])[1].append(item.impath)
    return library


def write_picture_library(path, records, image_root):
    """The official `SPLE_<DATASET>.json`; its `val` part is left empty (the reference never reads it)."""
    train = {name: [label, [os.path.relpath(p, image_root) for p in paths]]
             for name, (label, paths) in group_by_class(records).items()}
    atomic_write_json(path, {"train": [train], "val": [{}], "train_obj_list": list(train), "val_obj_list": []})
    print(f"Picture library written to {path}")


def read_picture_library(path, image_root):
    """{classname: [absolute paths]} from an official library file (only `train[0][name][1]` is used)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"TRAINER.DPC.PIC_LIB (SPLE.PIC_LIB): no such file: {path}")
    with open(path) as f:
        train = json.load(f)["train"][0]
    return {name: [os.path.join(image_root, p) for p in entry[1]] for name, entry in train.items()}


# ----------------------------------------------------------------------------------
# Dynamic hard negatives (dpc.md §4)
# ----------------------------------------------------------------------------------

def negatives_for_anchor(ranking, label, used, num_classes, strict_cap=False, fallback="reference"):
    """Negative classes of one anchor; accepted classes are appended to `used` (spec §4 step 2).

    ranking: the anchor's top-K classes under P, most similar first.
    used: the batch's ground-truth labels plus every negative accepted so far (non-repeat rule).
    Draws from Python's `random` only in the fallback.
    """
    k = len(ranking)
    candidates = []
    for c in ranking:
        # Reference behaviour: the K − 1 cap is tested on a list that is still empty, so it never
        # limits for K >= 2 and rejects everything at K = 1 (§4 step 2.2, §12 #5).
        if c != label and (len(candidates) if strict_cap else 0) < k - 1:
            candidates.append(c)
    negatives = [c for c in candidates if c not in used]
    used.extend(negatives)
    if len(negatives) < 2 and fallback == "reference":
        # Reference behaviour: C − 2 draws at most, from randint(1, C − 2) (classes 0 and C − 1
        # never come up); the draw after the second acceptance is made and discarded (§4 step 2.4).
        for _ in range(num_classes - 2):
            c = random.randint(1, num_classes - 2)
            if len(negatives) == 2:
                break
            if c not in used:
                negatives.append(c)
                used.append(c)
    elif len(negatives) < 2:
        free = [c for c in range(num_classes) if c not in used]
        extra = random.sample(free, min(2 - len(negatives), len(free)))
        negatives += extra
        used.extend(extra)
    return negatives


class HardNegativeSampler:
    """Builds DPC's enlarged batch: each anchor followed by one library image per negative class."""

    def __init__(self, library, classnames, transform, topk, strict_cap=False, fallback="reference",
                 dedup_anchors=False, non_repeat=True):
        missing = [name for name in classnames if not library.get(name)]
        if missing:
            raise ConfigError(f"The picture library has no images for base classes {missing}")
        self.paths = [library[name] for name in classnames]  # per base label, file order kept
        self.transform = transform
        self.topk = topk
        self.strict_cap = strict_cap
        self.fallback = fallback
        self.dedup_anchors = dedup_anchors
        self.non_repeat = non_repeat
        self.warned_empty_first = False

    def __call__(self, images, labels, probs):
        """images (B, 3, H, W), labels (B,), probs (B, C) under P -> X (N, 3, H, W), Y (N,).

        Per anchor, in batch order: fallback draws, `random.choice` picks, then the negatives'
        training transforms (the reference's RNG order, §4 "RNG consumption").
        """
        labels_list = labels.tolist()
        anchors = range(len(labels_list))
        if self.dedup_anchors:
            anchors = [b for b in anchors if labels_list[b] not in labels_list[:b]]
        batch_used = [labels_list[b] for b in anchors]  # duplicates included, as in the reference
        ranking = probs.topk(self.topk, dim=1).indices.tolist()
        groups, targets = [], []
        for b in anchors:
            # non-repeat: one `used` list for the whole batch; without it, each anchor only avoids its own class
            used = batch_used if self.non_repeat else [labels_list[b]]
            negatives = negatives_for_anchor(ranking[b], labels_list[b], used, len(self.paths),
                                             self.strict_cap, self.fallback)
            if not negatives and b == anchors[0] and not self.warned_empty_first:
                print("Note: a batch's first anchor got no negatives (the reference crashes here); continuing")
                self.warned_empty_first = True
            picks = [random.choice(self.paths[c]) for c in negatives]
            groups.append(images[b:b + 1])
            if picks:
                groups.append(torch.stack([self.transform(read_image(p)) for p in picks]).to(images.device))
            targets += [labels_list[b], *negatives]
        return torch.cat(groups), torch.tensor(targets, dtype=labels.dtype, device=labels.device)


def contrastive_loss(logits):
    """L_CL = ½[CE(Λ, arange N) + CE(Λᵀ, arange N)] (spec §6): sample i's positive is column i."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


@contextlib.contextmanager
def substituted_parameters(model, tensors):
    """Inside the block, `model`'s named parameters read as the given tensors (autograd flows into them).

    `torch.func.functional_call` does the same for `forward` only; this covers every method
    (`encode_text`, `encode_image`, the backbone's own `compute_loss`). Writing into the
    parameter slot keeps the module's parameter order.
    """
    saved = []
    try:
        for name, tensor in tensors.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = tensor
        yield
    finally:
        for owner, leaf, param in reversed(saved):
            owner._parameters[leaf] = param


# ----------------------------------------------------------------------------------
# The plug-in
# ----------------------------------------------------------------------------------

class DPCMixin:
    """DPC stage 2 (and its evaluation) on top of a backbone trainer: `class DPC_X(DPCMixin, X)`.

    θ: the backbone's trainable parameters, initialised to the stage-1 values P and saved under
    the backbone's checkpoint keys. P: a frozen copy of the stage-1 values, re-read from
    `BACKBONE_DIR` in every run. Q: the prompt the encoders see (`parallel_prompts`).
    The backbone's model must provide `forward(images) -> logits`, `encode_text()` and
    `encode_image(images)` (as `PromptedCLIP` does).
    """

    def __init__(self, cfg):
        self.dpc_cfg = opts = cfg.TRAINER.DPC
        for key, choices in _CHOICES.items():
            if opts[key] not in choices:
                raise ConfigError(f"TRAINER.DPC.{key} must be one of {', '.join(choices)}, got {opts[key]!r}")
        if not 0 < opts.WEIGHT_BASE <= 1 or not 0 <= opts.WEIGHT_NEW <= 1:
            raise ConfigError("TRAINER.DPC.WEIGHT_BASE must be in (0, 1] and WEIGHT_NEW in [0, 1]")
        if not opts.BACKBONE_DIR:
            raise ConfigError("TRAINER.DPC.BACKBONE_DIR (SPLE.BACK_CKPT_PATH) must name the stage-1 run directory")
        super().__init__(cfg)
        self.prompt_names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self.pretuned = self.load_pretuned_prompts()
        self.query_text_features = None
        print(f"DPC: ω_base {opts.WEIGHT_BASE}, ω_new {opts.WEIGHT_NEW}, base prompt {opts.BASE_PROMPT}, "
              f"parameterization {opts.PARAMETERIZATION}, prompt tensors {self.prompt_names}")

    # -- P from stage 1 ---------------------------------------------------------------
    def load_pretuned_prompts(self):
        """Copy the stage-1 prompt P into θ (θ₀ = P) and return a frozen copy of it."""
        directory, epoch = self.dpc_cfg.BACKBONE_DIR, self.dpc_cfg.BACKBONE_EPOCH
        save_dir = os.path.join(directory, self.checkpoint_name)
        epochs = checkpoint_epochs(save_dir)
        if epoch < 0 and epochs:
            epoch = epochs[-1]
        path = os.path.join(save_dir, f"{CHECKPOINT_PREFIX}{epoch}")
        if not os.path.isfile(path):
            raise MissingFileError(
                f"Stage-1 checkpoint not found: {path} (epochs present: {epochs or 'none'}). "
                "TRAINER.DPC.BACKBONE_DIR (SPLE.BACK_CKPT_PATH) is the stage-1 run directory, the folder holding "
                f"'{self.checkpoint_name}/', and BACKBONE_EPOCH (SPLE.BACK_CKPT_EPOCH) its epoch (-1: latest)")
        checkpoint = load_checkpoint(path)
        state_dict = checkpoint["state_dict"]
        module = self.checkpoint_module()
        keys = {id(p): key for key, p in module.named_parameters()}  # how the checkpoint names each tensor
        pretuned = {}
        for name in self.prompt_names:
            param = self.model.get_parameter(name)
            key = keys.get(id(param))
            if key not in state_dict:
                raise CheckpointError(f"Stage-1 checkpoint {path} has no '{key}': it is not a run of the backbone of "
                                      f"{self.cfg.TRAINER.NAME}. {checkpoint_writer(path, state_dict)}")
            if state_dict[key].shape != param.shape:
                raise ConfigError(
                    f"Stage-1 '{key}' in {path} has shape {tuple(state_dict[key].shape)}, this model "
                    f"{tuple(param.shape)}: stage 2 needs the stage-1 prompt settings (e.g. TRAINER.COOP.N_CTX, "
                    "CTX_INIT, CSC) and, for class-specific contexts, the same classes")
            with torch.no_grad():
                param.copy_(state_dict[key])
            pretuned[name] = param.detach().clone()
        # Stage-1 tensors that are not cloned (a subclass narrowing `trainable`, e.g. DPL's gates or
        # DGPrompt's generators) keep their stage-1 values, frozen. A stage 1 trained with another CLIP is refused.
        self.apply_checkpoint(checkpoint, path)
        print(f'Loaded the tuned prompt P from "{path}"')
        return pretuned

    # -- weighting-decoupling (dpc.md §3) -----------------------------------------------
    def parallel_prompts(self):
        """Q = (θ − (1 − ω_b)·P̃)·(1/ω_b) per prompt tensor, with its gradient path to θ (spec §3.2).

        released: P̃ is θ itself, detached (in the reference the converse "P" shares θ's storage),
        so Q equals θ up to rounding and θ's gradient is the loss gradient times 1/ω_b.
        frozen_p: P̃ is the stage-1 P, so Q = P + (θ − P)/ω_b (an effective step of 1/ω_b²).
        """
        w = self.dpc_cfg.WEIGHT_BASE
        released = self.dpc_cfg.PARAMETERIZATION == "released"
        prompts = {}
        for name in self.prompt_names:
            theta = self.model.get_parameter(name)
            anchor = theta.detach() if released else self.pretuned[name]
            prompts[name] = (theta - (1 - w) * anchor) * (1 / w)
        return prompts

    @torch.no_grad()
    def inference_prompts(self):
        """The base or the new prompt for this run's classes.

        Base classes (`SUBSAMPLE base`; `all` on ImageNet, as the reference): Q (`trained`) or
        ω_b·Q + (1 − ω_b)·P (`mixed`). New classes (`new`; `all` elsewhere): ω_n·Q + (1 − ω_n)·P,
        which is P exactly at ω_n = 0. With `released`, Q is taken as θ itself: the conversion is
        the identity up to rounding, which evaluation skips.
        """
        cfg = self.cfg
        if self.dpc_cfg.PARAMETERIZATION == "released":
            trained = {name: self.model.get_parameter(name).detach() for name in self.prompt_names}
        else:
            trained = self.parallel_prompts()
        subsample = cfg.DATASET.SUBSAMPLE_CLASSES
        if subsample == "base" or (subsample == "all" and cfg.DATASET.NAME == "ImageNet"):
            if self.dpc_cfg.BASE_PROMPT == "trained":
                return trained
            weight = self.dpc_cfg.WEIGHT_BASE
        else:
            weight = self.dpc_cfg.WEIGHT_NEW
        return {name: weight * q + (1 - weight) * self.pretuned[name] for name, q in trained.items()}

    def test(self, split=None, write_results=True):
        with substituted_parameters(self.model, self.inference_prompts()):
            return super().test(split, write_results)

    # -- stage-2 training -------------------------------------------------------------
    def before_train(self):
        dataset, opts = self.dm.dataset, self.dpc_cfg
        if opts.PIC_LIB:
            library, source = read_picture_library(opts.PIC_LIB, dataset.image_root), opts.PIC_LIB
        else:
            records = dataset.train_full if opts.LIBRARY_SOURCE == "full_train" else dataset.train_x
            library = {name: paths for name, (_, paths) in group_by_class(records).items()}
            source = opts.LIBRARY_SOURCE
            if opts.WRITE_PIC_LIB:
                path = os.path.join(opts.WRITE_PIC_LIB, f"SPLE_{self.cfg.DATASET.NAME}.json")
                write_picture_library(path, records, dataset.image_root)
        topk = min(opts.TOPK, self.num_classes)
        if topk < opts.TOPK:
            # The reference crashes in `topk` here (dpc.md §12 #8, e.g. EuroSAT's 5 base classes).
            print(f"TRAINER.DPC.TOPK {opts.TOPK} > {self.num_classes} classes: using top-{topk}")
        self.sampler = HardNegativeSampler(library, self.classnames, self.dm.tfm_train, topk,
                                           opts.STRICT_CAP, opts.FALLBACK, opts.DEDUP_ANCHORS, opts.NON_REPEAT)
        n_images = sum(len(paths) for paths in self.sampler.paths)
        print(f"Picture library ({source}): {n_images} images of {len(self.sampler.paths)} base classes; "
              f"top-{topk} hard negatives")
        super().before_train()

    @torch.no_grad()
    def query(self, images):
        """softmax(100·F·T_Pᵀ) of the anchors under the frozen P (spec §4 step 1); (B, C).

        Ranked as the reference does, on the softmax in the model dtype (fp16 underflow ties included).
        """
        with substituted_parameters(self.model, self.pretuned):
            if self.query_text_features is None:  # P is frozen: its text features never change
                text_features = self.model.encode_text()
                self.query_text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            image_features = self.model.encode_image(images)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return (100 * image_features @ self.query_text_features.t()).softmax(dim=-1)

    def compute_loss(self, batch):
        images, labels = self.sampler(batch.images, batch.labels, self.query(batch.images))  # (N, 3, H, W), (N,)
        with substituted_parameters(self.model, self.parallel_prompts()):
            # Column j of the backbone's logits is the text of class labels[j]: Λ = scale·Î T̂_Yᵀ, (N, N).
            loss = contrastive_loss(self.model(images)[:, labels])
            if self.dpc_cfg.ADD_BACKBONE_LOSS:
                loss = loss + super().compute_loss(batch)[0]
        return loss, None


@TRAINERS.register("DPC_CoOp", aliases=("StackSPLE_CoOp",), config=add_dpc_config)
class DPC_CoOp(DPCMixin, CoOp):
    """CoOp + DPC (the official `StackSPLE_CoOp`): the prompt is `prompt_learner.ctx`."""


@TRAINERS.register("DPC_KgCoOp", config=add_dpc_config)
class DPC_KgCoOp(DPCMixin, KgCoOp):
    """KgCoOp + DPC: the prompt is `prompt_learner.ctx`; L_CL alone unless ADD_BACKBONE_LOSS (dpc.md §11.3)."""


@TRAINERS.register("DPC_MaPLe", config=add_dpc_config)
class DPC_MaPLe(DPCMixin, MaPLe):
    """MaPLe + DPC: the prompt is every `prompt_learner` tensor, the couplings `proj` and
    `compound_prompt_projections` included, so ω_new = 0 restores the MaPLe backbone exactly (dpc.md §11.3)."""
