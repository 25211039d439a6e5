"""DPC: Dual-Prompt Collaboration for tuning vision-language models (Li et al., CVPR 2025, arXiv 2503.13443).

A plug-in on an already tuned prompt-learning backbone. Stage 1 is the backbone's own run
(`CoOp`, `KgCoOp`, `MaPLe`, ...), giving the tuned prompt P. Stage 2 (this file) clones P into
a parallel prompt and tunes only that, on the same base-class few-shot data, with the Dynamic
Hard Negative Optimizer: each image is contrasted with images and texts of the base classes the
frozen P confuses it with most (symmetric image-text contrastive loss). At inference,
weighting-decoupling gives the base classes the tuned prompt and the new classes (ω_new = 0)
the backbone's P, so new-class accuracy is the backbone's.

Written once as `DPCMixin`; `class DPC_CoOp(DPCMixin, CoOp)` applies it to a backbone, and
"the prompt" is whatever that backbone trains (its `trainable` parameters). Every in-tree
`DPC_*` trainer is registered here; the backbone files do not know DPC. The official code
calls DPC "SPLE"; its `SPLE.*` keys are accepted. Details: docs/methods/dpc.md. Deviations: README.
"""
import contextlib
import copy
import json
import os
import random

import torch
import torch.nn.functional as F
import yaml
from yacs.config import CfgNode as CN

from engine.checkpoint import CHECKPOINT_PREFIX, checkpoint_epochs, load_checkpoint
from engine.config import add_key_aliases
from engine.dataset import read_image, subsample_splits
from engine.io import atomic_write_json
from engine.errors import CheckpointError, ConfigError, MissingFileError
from engine.registry import TRAINERS
from engine.trainer import CheckpointMismatch, checkpoint_writer
from trainers.coop import CoOp
from trainers.dgprompt import DGPrompt
from trainers.dpl import DPL
from trainers.ivlp import IVLP
from trainers.kgcoop import KgCoOp
from trainers.maple import MaPLe
from trainers.promptkd import TEACHER, PromptKD, is_student_state
from trainers.prompting import normalize
from trainers.promptsrc import PromptSRC


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
    cfg.TRAINER.DPC.CLONE_DEEP_PROMPTS = False     # DPC_PromptKD: clone the deep prompts (released: fresh random)
    cfg.TRAINER.DPC.ALL_CLASSES_PROMPT = "reference"  # SUBSAMPLE all, loaded model: reference (name rule) | by_source


def _converse_only(value):
    if "converse" not in str(value):
        raise ConfigError(f"SPLE.STACK.MODE {value!r}: only DPC's 'converse' mode is implemented")
    return []


def _clone_init_only(value):
    if str(value) != "True":
        raise ConfigError("SPLE.SPLE_TRAINER.SPLE_INIT False is not supported: the parallel prompt starts at P")
    return []


def _unused(value):
    return []


# The official `SPLE.*` keys. Keys the reference declares but never reads are accepted and dropped.
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
            "FALLBACK": ("reference", "fixed"), "LIBRARY_SOURCE": ("full_train", "fewshot"),
            "ALL_CLASSES_PROMPT": ("reference", "by_source")}


# ----------------------------------------------------------------------------------
# Picture library: class name -> image paths, per-class file order kept
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
# Dynamic hard negatives
# ----------------------------------------------------------------------------------

def negatives_for_anchor(ranking, label, used, num_classes, strict_cap=False, fallback="reference",
                         fallback_skips_last=True):
    """Negative classes of one anchor; accepted classes are appended to `used` (the reference's acceptance rule).

    ranking: the anchor's top-K classes under P, most similar first.
    used: the batch's ground-truth labels plus every negative accepted so far (non-repeat rule).
    fallback_skips_last: the reference fallback draws from 1..C − 2 in C − 2 tries (CoOp); False:
        from 1..C − 1 in C − 1 tries (the released PromptKD variant).
    Draws from Python's `random` only in the fallback.
    """
    k = len(ranking)
    candidates = []
    for c in ranking:
        # Reference behaviour: the K − 1 cap is tested on a list that is still empty, so it never
        # limits for K >= 2 and rejects everything at K = 1 (`STRICT_CAP True` applies the cap).
        if c != label and (len(candidates) if strict_cap else 0) < k - 1:
            candidates.append(c)
    negatives = [c for c in candidates if c not in used]
    used.extend(negatives)
    if len(negatives) < 2 and fallback == "reference":
        # Reference behaviour: C − 2 draws at most, from randint(1, C − 2) (classes 0 and C − 1
        # never come up; the PromptKD variant: C − 1 draws from randint(1, C − 1)); the draw after
        # the second acceptance is made and discarded.
        top = num_classes - 2 if fallback_skips_last else num_classes - 1
        for _ in range(top):
            c = random.randint(1, top)
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
                 dedup_anchors=False, non_repeat=True, fallback_skips_last=True):
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
        self.fallback_skips_last = fallback_skips_last
        self.warned_empty_first = False

    def __call__(self, images, labels, probs):
        """images (B, 3, H, W), labels (B,), probs (B, C) under P -> X (N, 3, H, W), Y (N,).

        Per anchor, in batch order: fallback draws, `random.choice` picks, then the negatives'
        training transforms (the reference's RNG order).
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
                                             self.strict_cap, self.fallback, self.fallback_skips_last)
            if not negatives and b == anchors[0] and not self.warned_empty_first:
                print("Note: a batch's first anchor got no negatives (the reference crashes here); continuing")
                self.warned_empty_first = True
            picks = [random.choice(self.paths[c]) for c in negatives]
            groups.append(images[b:b + 1])
            if picks:
                groups.append(torch.stack([self.transform(read_image(p)) for p in picks]).to(images.device))
            targets += [labels_list[b], *negatives]
        return torch.cat(groups), torch.tensor(targets, dtype=labels.dtype, device=labels.device)


def training_dataset_name(run_dir):
    """`DATASET.NAME` of the run that wrote `run_dir`, from the `config.yaml` our trainer saves there."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"TRAINER.DPC.ALL_CLASSES_PROMPT by_source needs the training run's config.yaml: {path} is missing "
            "(a run of the official code has none). Use ALL_CLASSES_PROMPT reference for such a run.")
    with open(path) as f:
        name = (yaml.safe_load(f) or {}).get("DATASET", {}).get("NAME")
    if not name:
        raise ValueError(f"{path} has no DATASET.NAME")
    return name


def contrastive_loss(logits):
    """L_CL = ½[CE(Λ, arange N) + CE(Λᵀ, arange N)]: sample i's positive is column i."""
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

    fallback_skips_last = True  # the reference fallback's class range (see `negatives_for_anchor`)

    def is_dpc_prompt(self, name):
        """Which trainable parameters are θ (cloned from P, weighted); the rest train unweighted."""
        return True

    def negative_transform(self):
        """The transform of the library images added as negatives (the reference: the train one)."""
        return self.dm.tfm_train

    def evaluates_base_classes(self):
        """Base-class runs (`SUBSAMPLE base`; `all` as `all_classes_are_base` says) get the base prompt."""
        subsample = self.cfg.DATASET.SUBSAMPLE_CLASSES
        return subsample == "base" or (subsample == "all" and self.all_classes_are_base())

    def __init__(self, cfg):
        self.dpc_cfg = dpc_cfg = cfg.TRAINER.DPC
        for key, choices in _CHOICES.items():
            if dpc_cfg[key] not in choices:
                raise ConfigError(f"TRAINER.DPC.{key} must be one of {', '.join(choices)}, got {dpc_cfg[key]!r}")
        if not 0 < dpc_cfg.WEIGHT_BASE <= 1 or not 0 <= dpc_cfg.WEIGHT_NEW <= 1:
            raise ConfigError("TRAINER.DPC.WEIGHT_BASE must be in (0, 1] and WEIGHT_NEW in [0, 1]")
        if not dpc_cfg.BACKBONE_DIR:
            raise ConfigError("TRAINER.DPC.BACKBONE_DIR (SPLE.BACK_CKPT_PATH) must name the stage-1 run directory")
        self.loaded_model_dir = None  # the run directory of a checkpoint loaded for evaluation
        self.sampler = None           # the hard-negative sampler, built when training starts
        super().__init__(cfg)
        self.prompt_names = [name for name, p in self.model.named_parameters()
                             if p.requires_grad and self.is_dpc_prompt(name)]
        self.pretuned = self.load_pretuned_prompts()
        self.query_text_features = None
        print(f"DPC: ω_base {dpc_cfg.WEIGHT_BASE}, ω_new {dpc_cfg.WEIGHT_NEW}, base prompt {dpc_cfg.BASE_PROMPT}, "
              f"parameterization {dpc_cfg.PARAMETERIZATION}, prompt tensors {self.prompt_names}")

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

    # -- weighting-decoupling -----------------------------------------------
    def parallel_prompts(self):
        """Q = (θ − (1 − ω_b)·P̃)·(1/ω_b) per prompt tensor, with its gradient path to θ.

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

        Base classes (`SUBSAMPLE base`; `all` as `all_classes_are_base` says): Q (`trained`) or
        ω_b·Q + (1 − ω_b)·P (`mixed`). New classes (`new`; the other `all` runs): ω_n·Q + (1 − ω_n)·P,
        which is P exactly at ω_n = 0. With `released`, Q is taken as θ itself: the conversion is
        the identity up to rounding, which evaluation skips.
        """
        if self.dpc_cfg.PARAMETERIZATION == "released":
            trained = {name: self.model.get_parameter(name).detach() for name in self.prompt_names}
        else:
            trained = self.parallel_prompts()
        if self.evaluates_base_classes():
            if self.dpc_cfg.BASE_PROMPT == "trained":
                return trained
            weight = self.dpc_cfg.WEIGHT_BASE
        else:
            weight = self.dpc_cfg.WEIGHT_NEW
        return {name: weight * q + (1 - weight) * self.pretuned[name] for name, q in trained.items()}

    def all_classes_are_base(self):
        """With `SUBSAMPLE all`: whether this run's classes get the base prompt.

        Reference behaviour: the rule lives in the released `load_model`, so a model in memory
        (the end-of-training test, validation) always uses θ, and a loaded checkpoint (an
        `--eval-only` run, or `best_val`'s reload) uses θ only when `DATASET.NAME` is "ImageNet":
        cross-dataset targets and ImageNet variants get the new-class rule, and so does an
        eval-only re-test of a few-shot model on its own dataset. `by_source` gives a loaded
        checkpoint θ exactly when it is evaluated on the dataset it was trained on (read from the
        `config.yaml` of its run directory).
        """
        model_dir = self.loaded_model_dir
        if model_dir is None:
            return True
        if self.dpc_cfg.ALL_CLASSES_PROMPT == "reference":
            return self.cfg.DATASET.NAME == "ImageNet"
        return self.cfg.DATASET.NAME == training_dataset_name(model_dir)

    def load_model(self, directory, epoch=None):
        super().load_model(directory, epoch)
        if directory:
            self.loaded_model_dir = directory

    def test(self, split=None, write_results=True):
        with substituted_parameters(self.model, self.inference_prompts()):
            return super().test(split, write_results)

    # -- stage-2 training -------------------------------------------------------------
    def before_train(self):
        dataset, dpc_cfg = self.dm.dataset, self.dpc_cfg
        if dpc_cfg.PIC_LIB:
            library, source = read_picture_library(dpc_cfg.PIC_LIB, dataset.image_root), dpc_cfg.PIC_LIB
        else:
            records = dataset.train_full if dpc_cfg.LIBRARY_SOURCE == "full_train" else dataset.train_x
            library = {name: paths for name, (_, paths) in group_by_class(records).items()}
            source = dpc_cfg.LIBRARY_SOURCE
            if dpc_cfg.WRITE_PIC_LIB:
                path = os.path.join(dpc_cfg.WRITE_PIC_LIB, f"SPLE_{self.cfg.DATASET.NAME}.json")
                write_picture_library(path, records, dataset.image_root)
        topk = min(dpc_cfg.TOPK, self.num_classes)
        if topk < dpc_cfg.TOPK:
            # The reference crashes in `topk` here (e.g. EuroSAT's 5 base classes).
            print(f"TRAINER.DPC.TOPK {dpc_cfg.TOPK} > {self.num_classes} classes: using top-{topk}")
        self.sampler = HardNegativeSampler(library, self.classnames, self.negative_transform(), topk,
                                           dpc_cfg.STRICT_CAP, dpc_cfg.FALLBACK, dpc_cfg.DEDUP_ANCHORS,
                                           dpc_cfg.NON_REPEAT,
                                           self.fallback_skips_last)
        n_images = sum(len(paths) for paths in self.sampler.paths)
        print(f"Picture library ({source}): {n_images} images of {len(self.sampler.paths)} base classes; "
              f"top-{topk} hard negatives")
        super().before_train()

    @torch.no_grad()
    def query(self, images):
        """softmax(100·F·T_Pᵀ) of the anchors under the frozen P; (B, C).

        Ranked as the reference does, on the softmax in the model dtype (fp16 underflow ties included).
        """
        with substituted_parameters(self.model, self.pretuned):
            if self.query_text_features is None:  # P is frozen: its text features never change
                self.query_text_features = normalize(self.model.encode_text())
            image_features = self.model.encode_image(images)
        image_features = normalize(image_features)
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
    """KgCoOp + DPC: the prompt is `prompt_learner.ctx`; L_CL alone unless ADD_BACKBONE_LOSS."""


@TRAINERS.register("DPC_MaPLe", config=add_dpc_config)
class DPC_MaPLe(DPCMixin, MaPLe):
    """MaPLe + DPC: the prompt is every `prompt_learner` tensor, the couplings `proj` and
    `compound_prompt_projections` included, so ω_new = 0 restores the MaPLe backbone exactly."""


@TRAINERS.register("DPC_IVLP", config=add_dpc_config)
class DPC_IVLP(DPCMixin, IVLP):
    """IVLP + DPC: every prompt tensor is cloned and converted on its own: the text context, the first
    vision prompt `VPT` and each block's `VPT_shallow` in both towers."""


@TRAINERS.register("DPC_PromptSRC", config=add_dpc_config)
class DPC_PromptSRC(DPCMixin, PromptSRC):
    """PromptSRC + DPC: the IVLP prompt tensors as in `DPC_IVLP`; L_CL alone (ADD_BACKBONE_LOSS adds
    PromptSRC's own loss). Stage 2 does not aggregate over epochs: P is the stage-1 (aggregated)
    prompt, and both tests run on the frozen CLIP as the stage-1 checkpoint's aggregation left it,
    so the new-class result at ω_new = 0 is PromptSRC's own."""

    aggregates_epochs = False


@TRAINERS.register("DPC_DPL", config=add_dpc_config)
class DPC_DPL(DPCMixin, DPL):
    """DPL (reconstructed) + DPC: the cloned prompt is the prompt tokens (`ctx_text`, `ctx_vision`, or the
    couplings that make the vision tokens); the gates keep their stage-1 values, frozen."""

    trainable = ("prompt_learner.ctx_", "prompt_learner.couple.")


@TRAINERS.register("DPC_DGPrompt", config=add_dpc_config)
class DPC_DGPrompt(DPCMixin, DGPrompt):
    """DGPrompt (reconstructed) + DPC: the cloned prompt is the base prompts C_t, C_v; both generators keep
    their stage-1 weights, frozen, so they still adapt the cloned prompts to each class set and image."""

    trainable = ("prompt_learner.ctx_text", "prompt_learner.ctx_vision")

    @torch.no_grad()
    def query(self, images):
        """softmax(100·cos) under the frozen P (DPC's query); with IGT the text features are per image."""
        if not self.model.igt:
            return super().query(images)
        with substituted_parameters(self.model, self.pretuned):
            out = self.model.predict(images)
        cosine = (out.image_features.unsqueeze(1) @ out.text_features.transpose(1, 2)).squeeze(1)  # (B, C)
        return (100 * cosine).softmax(dim=-1)


# ----------------------------------------------------------------------------------
# DPC on PromptKD: the only deep-prompt variant with released code
# ----------------------------------------------------------------------------------

TEXT_CTX = TEACHER + "prompt_learner.ctx"      # θ's layer-0 text context (the teacher's, converse-weighted)
TEXT_ENCODER = TEACHER + "text_encoder."       # the text deep prompts live on the teacher's text blocks
# Official checkpoint names of the text side: the DPC model holds it under `prompt_learner`.
OFFICIAL_TEXT_NAMES = ((TEXT_CTX, "prompt_learner.ctx"), (TEXT_ENCODER, "prompt_learner.text_encoder."))


def validation_on_test_splits(cfg, train, val, test):
    """The standard SUBSAMPLE_CLASSES halves, with val := test (DPC's readers for PromptKD)."""
    train, _, test = subsample_splits(cfg, train, val, test)
    return train, test, test


@TRAINERS.register("DPC_PromptKD", aliases=("StackSPLE_PromptKD",), config=add_dpc_config)
class DPC_PromptKD(DPCMixin, PromptKD):
    """PromptKD + DPC (the official `StackSPLE_PromptKD`), with the released structure.

    The base classes get a text side: the teacher's ViT-L text tower with θ = its layer-0 context
    (converse-weighted like CoOp's) and its deep text prompts, plus the student's vision prompts; the
    projector trains too, unweighted. L_CL compares the projected student features of the enlarged
    batch with these text features, at the student's logit scale. Hard negatives are ranked by the
    frozen teacher. New classes get exactly PromptKD at ω_new = 0: the teacher's own text features,
    ω_n·θ + (1 − ω_n)·P vision prompts, and the stage-1 projector and BatchNorm statistics.

    Reference behaviour: the released code meant to clone the deep prompts (text blocks from the
    teacher file, vision blocks from the PromptKD file) but assigns them to a list the model never
    reads, so they start from fresh random values; that is the default here too (vision: the values
    drawn when the student was built; text: a fresh N(0, 0.02²) draw). `CLONE_DEEP_PROMPTS True`
    clones them. Stage 1 is read from `<BACKBONE_DIR>/VLPromptLearner/model-best.pth.tar` when it
    exists (as the reference), else `model.pth.tar-<BACKBONE_EPOCH>`.
    """

    split_protocol = staticmethod(validation_on_test_splits)
    selects_on_test = True  # val is the test set of the run's classes
    fallback_skips_last = False

    def is_trainable(self, name):
        return is_student_state(name) or self.is_text_prompt(name)

    @staticmethod
    def is_text_prompt(name):
        return name == TEXT_CTX or (name.startswith(TEXT_ENCODER) and name.endswith("VPT_shallow"))

    def is_dpc_prompt(self, name):
        return not name.startswith("VPT_image_trans.")  # the projector trains unweighted

    def negative_transform(self):
        return self.dm.tfm_test  # Reference behaviour: the PromptKD variant adds negatives with the test transform

    # -- P: the teacher's text prompts and the stage-1 student ------------------------------------
    def stage1_checkpoint(self):
        folder = os.path.join(self.dpc_cfg.BACKBONE_DIR, self.checkpoint_name)
        best = os.path.join(folder, "model-best.pth.tar")
        if os.path.isfile(best):
            return best
        epochs, epoch = checkpoint_epochs(folder), self.dpc_cfg.BACKBONE_EPOCH
        path = os.path.join(folder, f"{CHECKPOINT_PREFIX}{epochs[-1] if epoch < 0 and epochs else epoch}")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Stage-1 PromptKD checkpoint not found: {path} (epochs present: {epochs or 'none'}; no "
                "model-best.pth.tar). TRAINER.DPC.BACKBONE_DIR (SPLE.BACK_CKPT_PATH) is the PromptKD run directory, "
                "the folder holding 'VLPromptLearner/'")
        return path

    def load_pretuned_prompts(self):
        """P: the teacher's text prompts (loaded with the teacher) and the stage-1 student's vision prompts;
        θ starts at P except the deep prompts (see the class docstring). Keeps the stage-1 projector."""
        deep = [name for name in self.prompt_names if name.endswith("VPT_shallow")]
        fresh = {name: self.model.get_parameter(name).detach().clone() for name in deep}
        path = self.stage1_checkpoint()
        self.load_student_state(load_checkpoint(path)["state_dict"])
        print(f'Loaded the PromptKD student (P) from "{path}"')
        pretuned = {name: self.model.get_parameter(name).detach().clone() for name in self.prompt_names}
        self.backbone_projector = copy.deepcopy(self.model.VPT_image_trans).requires_grad_(False)
        if not self.dpc_cfg.CLONE_DEEP_PROMPTS:
            with torch.no_grad():
                for name in deep:
                    param = self.model.get_parameter(name)
                    if name.startswith(TEXT_ENCODER):
                        torch.nn.init.normal_(param, std=0.02)
                    else:
                        param.copy_(fresh[name])
            print(f"Deep prompts start from fresh random values, as in the released code ({len(deep)} tensors; "
                  "TRAINER.DPC.CLONE_DEEP_PROMPTS True clones them)")
        return pretuned

    def text_prompts_of(self, prompts):
        return {name: tensor for name, tensor in prompts.items() if self.is_text_prompt(name)}

    @torch.no_grad()
    def teacher_text_features(self):
        """The frozen teacher's class vectors (P in the text slots, whatever θ holds)."""
        if self.teacher_text is None:
            with substituted_parameters(self.model, self.text_prompts_of(self.pretuned)):
                self.teacher_text = normalize(self.model.encode_text())
        return self.teacher_text

    # -- training -----------------------------------------------------------------------------
    def parallel_prompts(self):
        # Reference behaviour: only the layer-0 text context goes through the converse weighting;
        # every other prompt tensor enters the encoders as it is.
        prompts = super().parallel_prompts()
        return {name: q if name == TEXT_CTX else self.model.get_parameter(name) for name, q in prompts.items()}

    @torch.no_grad()
    def query(self, images):
        """softmax(100·cos) of the frozen teacher's image and text features over the run's classes."""
        teacher_features = normalize(self.model.teacher.encode_image(images))
        return (100 * teacher_features @ self.teacher_text_features().t()).softmax(dim=-1)

    # -- evaluation ---------------------------------------------------------------------------
    def class_slice(self, split):
        return slice(None)  # the run's classes are one half already

    def inference_prompts(self):
        prompts = super().inference_prompts()
        if not self.evaluates_base_classes():  # new classes: the teacher's own text features
            prompts.update(self.text_prompts_of(self.pretuned))
        return prompts

    def test(self, split=None, write_results=True):
        if self.evaluates_base_classes():
            return super().test(split, write_results)
        trained, self.model.VPT_image_trans = self.model.VPT_image_trans, self.backbone_projector
        try:
            return super().test(split, write_results)
        finally:
            self.model.VPT_image_trans = trained

    def cached_text_features(self):
        if not self.cfg.TEST.CACHE_TEXT_FEATURES:
            return None
        with torch.no_grad():
            return normalize(self.model.encode_text())  # the text prompts the mixin put in place

    # -- checkpoints: θ and the projector under the official DPC model's names -----------------------
    def checkpoint_state_dict(self):
        state = self.model.state_dict()
        saved = {k: v for k, v in state.items() if is_student_state(k)}
        for name in self.prompt_names:
            if self.is_text_prompt(name):
                saved[official_text_name(name)] = state[name]
        return saved

    def load_checkpoint_state_dict(self, state_dict):
        text_names = [name for name in self.prompt_names if self.is_text_prompt(name)]
        missing = [official_text_name(n) for n in text_names if official_text_name(n) not in state_dict]
        if missing:
            raise CheckpointMismatch(f"it lacks the DPC_PromptKD text prompts {missing[:3]}: it is not a "
                                     "DPC_PromptKD checkpoint of this teacher")
        with torch.no_grad():
            for name in text_names:
                self.model.get_parameter(name).copy_(state_dict[official_text_name(name)])
        self.load_student_state(state_dict)


def official_text_name(name):
    for ours, official in OFFICIAL_TEXT_NAMES:
        if name.startswith(ours):
            return official + name[len(ours):]
    return name
