"""PromptKD: Unsupervised Prompt Distillation for Vision-Language Models (Li et al., CVPR 2024, arXiv 2403.02781).

A prompted student image encoder (ViT-B/16 with IVLP-style deep vision prompts) plus a small
projector learns, without labels, to reproduce the class distribution of a frozen teacher: a
ViT-L/14 CLIP tuned with PromptSRC on the dataset's base classes, loaded from a checkpoint file.
The student has no text branch: its class vectors are the teacher's prompted text features,
computed once per class list. In base-to-new (`TRAINER.MODAL base2novel`) the student trains on
the unlabelled train split of *every* class (transductive), val is the base half of the test
set and test its new half. Deviations: README "Differences".

The teacher is an `IVLPModel` (trainers/ivlp.py) built on `TRAINER.PROMPTKD.TEACHER_NAME`, whose
prompt depth and token counts are read from the checkpoint's keys; the student's vision tower is
CLIP's own ViT with `VPT` / `VPT_shallow` prompts, so the state-dict keys are the official ones.
"""
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.checkpoint import CHECKPOINT_PREFIX, checkpoint_epochs, load_checkpoint
from engine.clip_loading import load_clip_to_cpu
from engine.dataset import subsample_classes
from engine.registry import TRAINERS
from engine.errors import CheckpointError, ConfigError, MissingFileError
from engine.trainer import CheckpointMismatch, TrainerBase
from trainers.deep_prompting import DeepPromptedVisionEncoder
from trainers.ivlp import IVLPModel, add_vision_prompts, encode_prompted_image, is_ivlp_trainable
from trainers.prompting import normalize
from trainers.promptsrc import GPA_KEY, Aggregation, fold_constant

PROMPT_MARK = "VPT"           # official selection rule: student tensors whose name holds `VPT` train
TEACHER = "teacher."          # key prefix of the frozen teacher's tensors inside our model
MODALS = ("base2novel", "cross")
TEACHER_FOLDER = "VLPromptLearner"  # the teacher's (PromptSRC / IVLP) checkpoint folder
TEACHER_TRAIN_HINT = (
    "python train.py --trainer PromptSRC --config-file configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml "
    "--dataset-config-file configs/datasets/<dataset>.yaml --root DATA --seed 1 --output-dir TEACHER_DIR "
    "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base")


def add_promptkd_config(cfg):
    cfg.TRAINER.MODAL = "base2novel"               # base2novel (transductive base-to-new) | cross (cross-dataset)
    cfg.TRAINER.PROMPTKD = CN()
    cfg.TRAINER.PROMPTKD.N_CTX_VISION = 4          # student vision prompt tokens per prompted layer
    cfg.TRAINER.PROMPTKD.N_CTX_TEXT = 4            # teacher text context length if the teacher file lacks `ctx`
    cfg.TRAINER.PROMPTKD.CTX_INIT = "a photo of a"  # the teacher's template (its first N tokens are the ctx)
    cfg.TRAINER.PROMPTKD.PREC = "fp16"             # fp16 | fp32 | amp | bf16
    cfg.TRAINER.PROMPTKD.PROMPT_DEPTH_VISION = 9   # student prompted vision layers incl. the input
    cfg.TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT = 9     # read by the reference only for its unused student text tower
    cfg.TRAINER.PROMPTKD.TEMPERATURE = 1.0         # T of the distillation loss
    cfg.TRAINER.PROMPTKD.KD_WEIGHT = 1.0           # loss weight (the official scripts pass 1000)
    # Reference behaviour: the official default is the typo "ViT/L-14", which crashes; every config sets this.
    cfg.TRAINER.PROMPTKD.TEACHER_NAME = "ViT-L/14"  # teacher CLIP: a name or an OpenAI-format file
    cfg.TRAINER.PROMPTKD.TEACHER_CKPT = ""         # teacher checkpoint file or run directory ("" = official layout)
    cfg.TRAINER.PROMPTKD.TEACHER_ROOT = "teacher_model"  # root of the official layout <root>/<DATASET.NAME>/...
    cfg.TRAINER.PROMPTKD.PROJECT_LAYER = 2         # declared by the reference, never read
    cfg.TRAINER.PROMPTKD.CE_WEIGHT = 0.0           # declared by the reference, never read


# ----------------------------------------------------------------------------------
# Data: unlabelled all-class training (the official readers' PromptKD branch)
# ----------------------------------------------------------------------------------

def promptkd_splits(cfg, train, val, test):
    """base2novel: train_x = every class (SUBSAMPLE_CLASSES ignored), val = the base half of the test
    set, test = its new half, each relabelled from 0. cross: the SUBSAMPLE_CLASSES subset, val = test."""
    if cfg.TRAINER.MODAL == "cross":
        train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        return train, test, test
    _, base_test = subsample_classes(train, test, subsample="base")
    _, new_test = subsample_classes(train, test, subsample="new")
    return train, base_test, new_test


def check_modal(cfg):
    if cfg.TRAINER.MODAL not in MODALS:
        raise ConfigError(f"TRAINER.MODAL must be one of {', '.join(MODALS)}, got {cfg.TRAINER.MODAL!r}")


# ----------------------------------------------------------------------------------
# The teacher: a PromptSRC / IVLP checkpoint on a (ViT-L/14) CLIP
# ----------------------------------------------------------------------------------

def teacher_checkpoint_path(cfg):
    """TEACHER_CKPT (a file, or a run directory holding VLPromptLearner/), else the official layout."""
    promptkd_cfg = cfg.TRAINER.PROMPTKD
    if promptkd_cfg.TEACHER_CKPT:
        path = os.path.expanduser(promptkd_cfg.TEACHER_CKPT)
        folder = os.path.join(path, TEACHER_FOLDER)
        if os.path.isdir(folder):
            best = os.path.join(folder, "model-best.pth.tar")
            epochs = checkpoint_epochs(folder)
            if os.path.isfile(best) or not epochs:
                return best
            return os.path.join(folder, f"{CHECKPOINT_PREFIX}{epochs[-1]}")
        return path
    root = os.path.expanduser(promptkd_cfg.TEACHER_ROOT)
    if cfg.TRAINER.MODAL == "cross":
        return os.path.join(root, "ImageNet-xd", "VLPromptLearner_large", f"{CHECKPOINT_PREFIX}20")
    return os.path.join(root, cfg.DATASET.NAME, TEACHER_FOLDER, "model-best.pth.tar")


def missing_teacher_error(path, cfg):
    return MissingFileError(
        f"PromptKD teacher checkpoint not found: {path}\n"
        f"PromptKD distils from a frozen {cfg.TRAINER.PROMPTKD.TEACHER_NAME} PromptSRC teacher tuned on this "
        f"dataset's base classes. Set TRAINER.PROMPTKD.TEACHER_CKPT to its file or run directory, or put it at "
        f"<TEACHER_ROOT>/<DATASET.NAME>/VLPromptLearner/model-best.pth.tar (TEACHER_ROOT "
        f"'{cfg.TRAINER.PROMPTKD.TEACHER_ROOT}'; cross-dataset: <TEACHER_ROOT>/ImageNet-xd/VLPromptLearner_large/"
        f"model.pth.tar-20).\nThe official teachers are published in the PromptKD repository's teacher_model "
        f"release (one per dataset). To train one with our PromptSRC trainer:\n  {TEACHER_TRAIN_HINT}\n"
        "then pass TRAINER.PROMPTKD.TEACHER_CKPT TEACHER_DIR.")


def _block_indices(state_dict, tower):
    pattern = re.compile(rf"^{tower}\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
    return sorted(int(m.group(1)) for key in state_dict if (m := pattern.match(key)))


def teacher_design(state_dict, promptkd_cfg):
    """The teacher's IVLP options read from its checkpoint keys (the reference hard-codes 9/9/4/4).

    Returns (options node, expected prompt keys)."""
    text_blocks, vision_blocks = _block_indices(state_dict, "text_encoder"), _block_indices(state_dict, "image_encoder")
    if "prompt_learner.ctx" in state_dict:
        n_ctx_text = state_dict["prompt_learner.ctx"].shape[0]
    elif text_blocks:
        n_ctx_text = state_dict[f"text_encoder.transformer.resblocks.{text_blocks[0]}.VPT_shallow"].shape[0]
    else:
        n_ctx_text = promptkd_cfg.N_CTX_TEXT
    if "image_encoder.VPT" in state_dict:
        n_ctx_vision = state_dict["image_encoder.VPT"].shape[0]
    elif vision_blocks:
        n_ctx_vision = state_dict[f"image_encoder.transformer.resblocks.{vision_blocks[0]}.VPT_shallow"].shape[0]
    else:
        n_ctx_vision = 0
    depth_text = 1 + max(text_blocks, default=0)
    depth_vision = 1 + max(vision_blocks, default=0) if n_ctx_vision else 0
    design = CN(dict(N_CTX_TEXT=n_ctx_text, N_CTX_VISION=max(n_ctx_vision, 1), CTX_INIT=promptkd_cfg.CTX_INIT,
                     PROMPT_DEPTH_TEXT=depth_text, PROMPT_DEPTH_VISION=depth_vision))
    expected = ["prompt_learner.ctx"]
    expected += [f"text_encoder.transformer.resblocks.{k}.VPT_shallow" for k in range(1, depth_text)]
    if depth_vision:
        expected += ["image_encoder.VPT"]
        expected += [f"image_encoder.transformer.resblocks.{k}.VPT_shallow" for k in range(1, depth_vision)]
    return design, expected


def load_teacher(cfg, classnames, precision):
    """Build the frozen teacher from TEACHER_NAME and its checkpoint; returns an `IVLPModel` in eval mode.

    Every tensor of the file is loaded (official whole-model files carry the teacher's frozen weights
    too), except the class-dependent token buffers and PromptSRC's zero-shot image encoder.
    """
    promptkd_cfg = cfg.TRAINER.PROMPTKD
    path = teacher_checkpoint_path(cfg)
    if not os.path.isfile(path):
        raise missing_teacher_error(path, cfg)
    state_dict = {k: v for k, v in load_checkpoint(path)["state_dict"].items()
                  if not k.startswith(("prompt_learner.token_", "prompt_learner.ZS_image_encoder."))}
    aggregation = state_dict.pop(GPA_KEY, None)  # our PromptSRC files: the GPA setting, no frozen weights
    design, expected = teacher_design(state_dict, promptkd_cfg)
    print(f"CLIP Teacher name is {promptkd_cfg.TEACHER_NAME}")
    print(f'Teacher checkpoint "{path}": text prompts {design.N_CTX_TEXT} tokens, depth {design.PROMPT_DEPTH_TEXT}; '
          f"vision prompts {design.N_CTX_VISION if design.PROMPT_DEPTH_VISION else 0} tokens, depth "
          f"{design.PROMPT_DEPTH_VISION}")
    teacher_clip = precision.prepare_clip(load_clip_to_cpu(promptkd_cfg.TEACHER_NAME))
    if tuple(cfg.INPUT.SIZE) != (teacher_clip.visual.input_resolution,) * 2:
        raise ConfigError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the teacher CLIP "
                         f"{promptkd_cfg.TEACHER_NAME} input resolution {teacher_clip.visual.input_resolution}")
    teacher = IVLPModel(design, classnames, teacher_clip)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        print(f"Warning: the teacher checkpoint {path} lacks the prompt tensors {missing}: they keep their initial "
              "values (random, or the CTX_INIT phrase for ctx) instead of trained ones, so the teacher is not the "
              "model that was tuned. Is it a PromptSRC/IVLP checkpoint of this teacher?")
    try:
        _, unexpected = teacher.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"The teacher checkpoint {path} does not fit the teacher CLIP "
                           f"{promptkd_cfg.TEACHER_NAME} ({err}); set TRAINER.PROMPTKD.TEACHER_NAME to the CLIP "
                           "it was trained on") from err
    foreign = [k for k in unexpected if k.startswith(("image_encoder.", "text_encoder."))]
    if foreign:
        raise CheckpointError(f"The teacher checkpoint {path} has tensors the teacher CLIP "
                       f"{promptkd_cfg.TEACHER_NAME} lacks ({foreign[:4]}); set TRAINER.PROMPTKD.TEACHER_NAME to "
                       "the CLIP it was trained on")
    if unexpected:
        print(f"Teacher checkpoint entries not used by the teacher: {unexpected}")
    if aggregation is not None:
        fold_teacher_weights(teacher, Aggregation.from_tensor(aggregation))
    return teacher.eval()


@torch.no_grad()
def fold_teacher_weights(teacher, aggregation):
    """Give the frozen weights of a teacher from our PromptSRC file the GPA fold its training left them
    with (official files carry those weights themselves; ours record only the setting)."""
    if aggregation.trainable_only:
        return
    weights = aggregation.weights()
    for key, tensor in teacher.state_dict().items():
        if tensor.is_floating_point() and not is_ivlp_trainable(key) and not key.startswith("prompt_learner.token_"):
            tensor.copy_(fold_constant(tensor, weights))


# ----------------------------------------------------------------------------------
# The student
# ----------------------------------------------------------------------------------

class FeatureProjector(nn.Module):
    """The official `Feature_Trans_Module_two_layer`: 1x1 Conv -> BatchNorm -> ReLU -> 1x1 Conv on
    (B, in, 1, 1), i.e. Linear -> BatchNorm1d -> ReLU -> Linear. Keys `conv1.{0,1,3}.*`.

    The convolutions are in the model dtype (fp16 in the reference), the BatchNorm in fp32.
    """

    def __init__(self, in_dim, out_dim, dtype):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size=1), nn.BatchNorm2d(out_dim),
                                   nn.ReLU(inplace=True), nn.Conv2d(out_dim, out_dim, kernel_size=1))
        self.conv1[0].to(dtype)
        self.conv1[3].to(dtype)

    def forward(self, x):
        """x: (B, in) -> (B, out)."""
        return self.conv1(x[:, :, None, None]).flatten(1)


class PromptKDModel(nn.Module):
    """The student (prompted image encoder + projector, official key names) and the frozen teacher.

    `forward(images, text_features=None)`: logits `logit_scale.exp() · f̂_s @ tᵀ`, with `t` normalised
    class vectors (default: the teacher's text features, computed now).
    """

    def __init__(self, promptkd_cfg, clip_model, teacher):
        super().__init__()
        if promptkd_cfg.PROMPT_DEPTH_TEXT < 1:
            raise ConfigError(f"TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT must be >= 1, got {promptkd_cfg.PROMPT_DEPTH_TEXT}")
        if promptkd_cfg.PROMPT_DEPTH_VISION < 0:
            raise ConfigError(f"TRAINER.PROMPTKD.PROMPT_DEPTH_VISION must be >= 0, "
                              f"got {promptkd_cfg.PROMPT_DEPTH_VISION}")
        self.teacher = teacher
        self.image_encoder = DeepPromptedVisionEncoder(clip_model.visual)
        self.n_ctx_vision = add_vision_prompts(self.image_encoder, promptkd_cfg.N_CTX_VISION,
                                               promptkd_cfg.PROMPT_DEPTH_VISION)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        # Reference behaviour: 512 -> 768 hard-coded (ViT-B/16 -> ViT-L/14 embeddings); read from the models here.
        student_dim = clip_model.visual.proj.shape[1]
        teacher_dim = teacher.text_encoder.text_projection.shape[1]
        self.VPT_image_trans = FeatureProjector(student_dim, teacher_dim, self.dtype)
        print(f"Number of context words (tokens) for Vision prompting: {self.n_ctx_vision}")

    def encode_image(self, images):
        """Projected student features (B, teacher embed dim), not normalised."""
        return self.VPT_image_trans(encode_prompted_image(self.image_encoder, images.type(self.dtype)))

    def encode_text(self):
        """The teacher's prompted text features of the run's classes (the class vectors)."""
        return self.teacher.encode_text()

    def forward(self, images, text_features=None):
        if text_features is None:
            text_features = normalize(self.encode_text())
        return self.logit_scale.exp() * normalize(self.encode_image(images)) @ text_features.t()


def distillation_loss(student_logits, teacher_logits, temperature, weight):
    """KD_WEIGHT · T² · Σ_{b,c} KL(teacher ‖ student) / (B·C): the batch-mean KL divided by the class count."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    p = F.softmax(teacher_logits / temperature, dim=1)
    return weight * (F.kl_div(log_q, p, reduction="sum") * temperature * temperature / student_logits.numel())


# ----------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------

@TRAINERS.register("PromptKD", config=add_promptkd_config)
class PromptKD(TrainerBase):
    """Distils the teacher's class distribution into the prompted student; labels are never read.

    Evaluation: `SUBSAMPLE_CLASSES base` (the train phase of scripts/base2new.sh) tests the base half
    (`val`), `new` the new half (`test`); with `all` (the official command lines) `TEST.SPLIT` decides.
    Checkpoints (folder `VLPromptLearner`) hold the student's trainable tensors and BatchNorm statistics
    under the official keys; official whole-student files load too.
    """

    config_node = "PROMPTKD"
    checkpoint_name = "VLPromptLearner"
    split_protocol = staticmethod(promptkd_splits)
    selects_on_test = True  # val is the base half of the test set (cross: the test set itself)

    def __init__(self, cfg):
        check_modal(cfg)
        promptkd_cfg = cfg.TRAINER.PROMPTKD
        for key, default in (("PROJECT_LAYER", 2), ("CE_WEIGHT", 0.0)):
            if promptkd_cfg[key] != default:
                print(f"Warning: TRAINER.PROMPTKD.{key} {promptkd_cfg[key]} is ignored "
                      "(the official PromptKD never reads it)")
        self.teacher_text = None  # normalised teacher class vectors, computed once
        self.eval_classes = slice(None)
        super().__init__(cfg)

    def is_trainable(self, name):
        return is_student_state(name)

    def build_model(self, clip_model, classnames):
        teacher = load_teacher(self.cfg, classnames, self.precision)
        return PromptKDModel(self.cfg.TRAINER.PROMPTKD, clip_model, teacher)

    # -- the teacher's outputs --------------------------------------------------------------------
    @torch.no_grad()
    def teacher_text_features(self):
        """Normalised teacher text features of all the run's classes, computed once: the teacher is frozen
        (the reference recomputes them at every step and test batch; same values)."""
        if self.teacher_text is None:
            self.teacher_text = normalize(self.model.teacher.encode_text())
        return self.teacher_text

    @torch.no_grad()
    def teacher_logits(self, images, text_features):
        teacher = self.model.teacher
        return teacher.logit_scale.exp() * normalize(teacher.encode_image(images)) @ text_features.t()

    def compute_loss(self, batch):
        promptkd_cfg = self.cfg.TRAINER.PROMPTKD
        text_features = self.teacher_text_features()
        teacher_logits = self.teacher_logits(batch.images, text_features)
        student_logits = self.model(batch.images, text_features)
        return distillation_loss(student_logits, teacher_logits, promptkd_cfg.TEMPERATURE, promptkd_cfg.KD_WEIGHT), None

    # -- evaluation -----------------------------------------------------------------------------
    def evaluation_split(self):
        subsample = self.cfg.DATASET.SUBSAMPLE_CLASSES
        return {"base": "val", "new": "test"}.get(subsample, self.cfg.TEST.SPLIT)

    def class_slice(self, split):
        """Which class vectors a split is scored against: base2novel val = the base half, test = the new half."""
        if self.cfg.TRAINER.MODAL == "cross":
            return slice(None)
        n_base = math.ceil(self.num_classes / 2)
        return slice(None, n_base) if split == "val" else slice(n_base, None)

    def test(self, split=None, write_results=True):
        split = split or self.evaluation_split()
        if split == "val" and self.val_loader is None:
            split = "test"
        self.eval_classes = self.class_slice(split)
        return super().test(split, write_results)

    def cached_text_features(self):
        if not self.cfg.TEST.CACHE_TEXT_FEATURES:
            return None
        return self.teacher_text_features()[self.eval_classes]

    def model_inference(self, images, text_features=None):
        if text_features is None:  # the reference's per-batch teacher text pass
            with torch.no_grad():
                text_features = normalize(self.model.encode_text())[self.eval_classes]
        return self.model(images, text_features)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_module(self):
        return self.model  # the official registered model is the whole student

    def checkpoint_state_dict(self):
        """The student's prompts and projector, BatchNorm statistics included (they change the output)."""
        return {k: v for k, v in self.model.state_dict().items() if is_student_state(k)}

    def load_checkpoint_state_dict(self, state_dict):
        self.load_student_state(state_dict)

    def load_student_state(self, state_dict):
        """Load the student's tensors; an official whole-student file's frozen ViT is compared with the
        configured backbone and a mismatch is reported."""
        ours = {k for k in self.model.state_dict() if is_student_state(k)}
        student = {k: v for k, v in state_dict.items() if k in ours}
        missing = [k for k in ours if k not in student]
        if missing:
            raise CheckpointMismatch(f"it lacks the student tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}: "
                                     "it was written by another method or with other PROMPT_DEPTH_VISION / "
                                     "N_CTX_VISION settings")
        self.report_frozen_mismatch({k: v for k, v in state_dict.items()
                                     if k not in ours and k.startswith(("image_encoder.", "logit_scale"))})
        try:
            self.model.load_state_dict(student, strict=False)
        except RuntimeError as err:
            raise CheckpointMismatch(f"The checkpoint does not fit this student ({err}): the student CLIP "
                               "(MODEL.BACKBONE.NAME) and the teacher must be the ones it was trained with") from err


def is_student_state(name):
    """The official rule (a name holding `VPT`, outside the teacher): prompts, projector and its BN buffers."""
    return PROMPT_MARK in name and not name.startswith(TEACHER)
