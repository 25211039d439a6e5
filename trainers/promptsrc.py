"""PromptSRC: Self-regulating Prompts (Khattak et al., ICCV 2023, arXiv 2307.06948).

IVLP's independent deep prompts (ivlp.py), regulated by the frozen zero-shot CLIP:
    loss = CE + KL(zero-shot || prompted logits) + 25·L1(text features) + 10·L1(image features)
where the zero-shot text targets are the mean of un-normalised CLIP text features over 60
ImageNet templates and the zero-shot image features come from CLIP's image tower without
prompts. Gaussian prompt aggregation (GPA) then replaces the final weights by a Gaussian-weighted
sum over the epochs' states. Deviations: README "Differences".

The zero-shot image tower is CLIP's own (the prompts live on its blocks but enter only when the
prompted forward passes them), so no third copy of the tower is built.

GPA, as the reference does it: after each epoch the whole state (prompts, frozen weights, token
buffers, logit scale) is added with the epoch's weight, in each tensor's own dtype. The frozen
tensors never change during training, so their sum depends only on the weights: we accumulate
the prompts only and fold the frozen tensors once, at the end, with the same operations (and
again, from the pristine CLIP, whenever one of our checkpoints is loaded).
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.errors import ConfigError
from engine.trainer import CheckpointMismatch
from trainers.ivlp import IVLP, IVLPModel, add_ivlp_keys, is_ivlp_trainable
from trainers.prompting import normalize
from trainers.templates import PROMPTSRC_TEMPLATES, template_prompts

# Entry of our checkpoints' state dict recording the aggregation that produced the weights:
# float64 (GPA_MEAN, GPA_STD, MAX_EPOCH, GPA_TRAINABLE_ONLY). Official loaders ignore it.
GPA_KEY = "gpa_parameters"
# The official whole-model files hold a separate zero-shot tower under this prefix.
ZERO_SHOT_TOWER = "prompt_learner.ZS_image_encoder."
TEXTS_PER_CALL = 2048  # template texts per text-encoder call when building the zero-shot targets


def add_promptsrc_config(cfg):
    cfg.TRAINER.PROMPTSRC = CN()
    add_ivlp_keys(cfg.TRAINER.PROMPTSRC, n_ctx=4)
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25       # L1 between prompted and zero-shot text features
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10      # L1 between prompted and zero-shot image features
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15               # Gaussian over the (1-based) epochs: mean
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1                 # ... and standard deviation
    cfg.TRAINER.PROMPTSRC.GPA_TRAINABLE_ONLY = False  # True: aggregate the prompts only, not the frozen CLIP


def gaussian_weights(mean, std, max_epoch):
    """GPA weights w_1..w_E: a Gaussian density at the epochs 1..max_epoch, normalised to sum 1."""
    density = [1 / (std * math.sqrt(2 * math.pi)) * math.exp(-1 / 2 * ((e - mean) / std) ** 2)
               for e in range(1, max_epoch + 1)]
    total = sum(density)
    return [d / total for d in density]


def add_weighted(accumulator, state, weight):
    """accumulator += weight·state per tensor, in each tensor's own dtype (an empty one starts at w·S)."""
    for key, value in state.items():
        term = value.detach() * weight
        accumulator[key] = accumulator[key] + term if key in accumulator else term


def fold_constant(tensor, weights):
    """What the epoch-by-epoch accumulation makes of a tensor that never changed: w_1·t + w_2·t + ...,
    left to right in the tensor's dtype (in fp16 this rounds t by up to an ulp: the sum of the
    weights is 1 only in float64)."""
    total = tensor * weights[0]
    for weight in weights[1:]:
        total = total + tensor * weight
    return total


@dataclass(frozen=True)
class Aggregation:
    """The GPA setting that produced a model's weights."""
    mean: float
    std: float
    max_epoch: int
    trainable_only: bool

    def weights(self):
        return gaussian_weights(self.mean, self.std, self.max_epoch)

    def as_tensor(self):
        return torch.tensor([self.mean, self.std, self.max_epoch, float(self.trainable_only)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, tensor):
        mean, std, max_epoch, trainable_only = tensor.tolist()
        return cls(mean, std, int(max_epoch), bool(trainable_only))


class PromptSRCModel(IVLPModel):
    """IVLP plus the frozen zero-shot references of the self-regulating losses.

    Args:
        promptsrc_cfg: a config node with the IVLP keys (PromptSRC's own, or PromptKD's teacher settings).
    """

    def __init__(self, promptsrc_cfg, classnames, clip_model):
        super().__init__(promptsrc_cfg, classnames, clip_model)
        self.classnames = list(classnames)
        # Kept out of the module tree (no state-dict key, stays on the CPU): only the zero-shot
        # text targets need the token table.
        object.__setattr__(self, "token_embedding", clip_model.token_embedding)
        self.text_loss_weight = promptsrc_cfg.TEXT_LOSS_WEIGHT
        self.image_loss_weight = promptsrc_cfg.IMAGE_LOSS_WEIGHT
        self.fixed_embeddings = None  # zero-shot text targets (n_cls, embed_dim), built at the first loss

    def zero_shot_image_features(self, images):
        """CLIP's image features without any prompt (its own tower, frozen)."""
        with torch.no_grad():
            return self.image_encoder(images.type(self.dtype))

    @torch.no_grad()
    def zero_shot_text_features(self, templates=PROMPTSRC_TEMPLATES):
        """(n_cls, embed_dim) fp32: the plain mean over `templates` of CLIP's un-normalised fp32
        text features of `template.format(classname)` (not CLIP's normalised ensemble)."""
        # Reference behaviour: a separate CLIP converted to fp32 encodes the templates.
        encoder = copy.deepcopy(self.text_encoder).float()
        encoder.dtype = torch.float32
        device, n_cls = self.logit_scale.device, len(self.classnames)
        templates_per_call = max(1, TEXTS_PER_CALL // n_cls)
        features = []  # (templates, n_cls, embed_dim) in chunks
        with torch.autocast(device.type, enabled=False):
            for start in range(0, len(templates), templates_per_call):
                group = templates[start:start + templates_per_call]
                prompts = template_prompts(self.token_embedding, group, self.classnames, torch.float32)
                features.append(encoder(prompts.embedding.to(device), prompts.tokenized).view(len(group), n_cls, -1))
        return torch.cat(features).mean(dim=0)

    def loss(self, images, labels):
        """CE + KL(zero-shot || prompted) + text L1 + image L1, with the reference's dtypes."""
        if self.fixed_embeddings is None:
            self.fixed_embeddings = self.zero_shot_text_features()
        text_features = self.encode_text()
        image_features = self.encode_image(images)
        text_features = normalize(text_features)
        image_features = normalize(image_features)
        scale = self.logit_scale.exp()
        logits = scale * image_features @ text_features.t()
        with torch.no_grad():
            zs_text = normalize(self.fixed_embeddings)  # fp32
            zs_image = normalize(self.zero_shot_image_features(images))
            zs_logits = scale * zs_image @ zs_text.type(zs_image.dtype).t()
        loss_ce = F.cross_entropy(logits, labels)
        # Reference behaviour: the text term is computed in fp32 (fp16 features minus fp32 targets).
        loss_text = F.l1_loss(text_features.float(), zs_text, reduction="mean") * self.text_loss_weight
        loss_image = F.l1_loss(image_features, zs_image, reduction="mean") * self.image_loss_weight
        # KL(zero-shot || prompted), summed and divided by B·C (temperature 1).
        loss_logits = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                               log_target=True) / logits.numel()
        return loss_ce + (loss_logits + loss_text + loss_image)


@TRAINERS.register("PromptSRC", config=add_promptsrc_config)
class PromptSRC(IVLP):
    """IVLP trained with the self-regulating losses, its final weights Gaussian-aggregated over epochs.

    Checkpoints (folder `VLPromptLearner`) hold the trainable tensors under the official key names
    plus the aggregation setting; loading one re-derives the aggregated frozen CLIP weights from
    the configured backbone. Official whole-model files load with their own frozen tensors.
    """

    config_node = "PROMPTSRC"
    aggregates_epochs = True  # DPC's stage 2 (trainers/dpc.py) trains a PromptSRC model without GPA

    def build_model(self, clip_model, classnames):
        promptsrc_cfg, max_epoch = self.cfg.TRAINER.PROMPTSRC, self.cfg.OPTIM.MAX_EPOCH
        self.aggregation = Aggregation(float(promptsrc_cfg.GPA_MEAN), float(promptsrc_cfg.GPA_STD), max_epoch,
                                       bool(promptsrc_cfg.GPA_TRAINABLE_ONLY))
        if promptsrc_cfg.GPA_STD <= 0:
            raise ConfigError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {promptsrc_cfg.GPA_STD}")
        if self.aggregates_epochs and not 1 <= promptsrc_cfg.GPA_MEAN <= max_epoch:
            # Reference behaviour: the weights are normalised over 1..MAX_EPOCH whatever the mean.
            print(f"Warning: TRAINER.PROMPTSRC.GPA_MEAN {promptsrc_cfg.GPA_MEAN} lies outside the epochs "
                  f"1..{max_epoch}: nearly all of the aggregation weight goes to the nearest end epoch (move "
                  "GPA_MEAN with OPTIM.MAX_EPOCH)")
        self.gpa_weights = self.aggregation.weights()
        self.gpa_accumulator = {}   # Σ_e w_e·prompts_e over the epochs done
        self.gpa_epochs = 0         # epochs in the accumulator
        self.gpa_record = None      # the Aggregation the current weights come from (None: not aggregated)
        self.pristine_frozen = None  # CPU copy of the frozen tensors, kept before they are first changed
        return PromptSRCModel(promptsrc_cfg, classnames, clip_model)

    def build_trainer_model(self):
        model = super().build_trainer_model()
        print(f"Parameters count: {sum(1 for _, p in model.named_parameters() if p.requires_grad)}")
        return model

    def compute_loss(self, batch):
        return self.model.loss(batch.images, batch.labels), None

    # -- Gaussian prompt aggregation ---------------------------------------------------
    def forward_backward(self, batch):
        summary = super().forward_backward(batch)
        if self.aggregates_epochs and self.batch_idx + 1 == self.num_batches:
            self.aggregate_epoch()  # after the epoch's last step and LR step, as the reference
        return summary

    def trainable_state(self):
        return {name: p.detach() for name, p in self.model.named_parameters() if is_ivlp_trainable(name)}

    def aggregate_epoch(self):
        if self.gpa_epochs != self.epoch:
            if self.gpa_epochs >= 0:
                print(f"Warning: GPA cannot aggregate: epochs 1..{self.epoch} are not in its accumulator (resumed "
                      "from a file without it); the run ends with the last epoch's weights, as the official code")
            self.gpa_epochs = -1
            return
        add_weighted(self.gpa_accumulator, self.trainable_state(), self.gpa_weights[self.epoch])
        self.gpa_epochs += 1
        if self.gpa_epochs == self.max_epoch:
            print("Using GPA model for final inference...")
            with torch.no_grad():
                for name, value in self.gpa_accumulator.items():
                    self.model.get_parameter(name).copy_(value)
            self.gpa_accumulator = {}
            self.gpa_record = self.aggregation
            # Reference behaviour: the token buffers are aggregated too (for this run's own test).
            self.fold_frozen_tensors(self.aggregation, class_buffers=True)

    def frozen_tensors(self, class_buffers):
        """The floating-point state tensors GPA folds besides the prompts (frozen weights, buffers)."""
        return {k: v for k, v in self.model.state_dict().items()
                if v.is_floating_point() and not is_ivlp_trainable(k)
                and (class_buffers or k.rsplit(".", 1)[-1] not in self.class_dependent_buffers)}

    def save_pristine_frozen(self):
        """Keep a CPU copy of the frozen tensors before they first change (later folds start from it)."""
        if self.pristine_frozen is None:
            self.pristine_frozen = {k: v.to("cpu", copy=True) for k, v in self.frozen_tensors(True).items()}

    @torch.no_grad()
    def fold_frozen_tensors(self, aggregation, class_buffers=False):
        """Set the frozen tensors to their GPA fold under `aggregation`, from the pristine CLIP (the
        token buffers too if `class_buffers`); None or a trainable-only aggregation restores them."""
        if aggregation is not None and aggregation.trainable_only:
            aggregation = None
        if aggregation is None and self.pristine_frozen is None:
            return  # never changed
        self.save_pristine_frozen()
        weights = aggregation.weights() if aggregation else None
        for key, tensor in self.frozen_tensors(class_buffers).items():
            pristine = self.pristine_frozen[key].to(tensor.device)
            tensor.copy_(fold_constant(pristine, weights) if weights else pristine)

    # -- checkpoints and resume --------------------------------------------------------
    def checkpoint_state_dict(self):
        """The trainable tensors (official key names) and, once aggregated, the GPA setting."""
        state = super().checkpoint_state_dict()
        if self.gpa_record is not None:
            state[GPA_KEY] = self.gpa_record.as_tensor()
        return state

    def load_checkpoint_state_dict(self, state_dict):
        """Our files: the prompts, and the frozen CLIP folded as the recorded aggregation did it.
        Official whole-model files: the prompts and the file's own (aggregated) frozen tensors, as
        the official loader does; its separate zero-shot tower is CLIP's own tower here."""
        state_dict = dict(state_dict)
        record = state_dict.pop(GPA_KEY, None)
        for key in [k for k in state_dict if k.startswith(ZERO_SHOT_TOWER)]:
            del state_dict[key]
        self.load_prompt_tensors(state_dict)  # first: a file of another method fails before any change
        ours = self.frozen_tensors(class_buffers=False)
        frozen = {k: v for k, v in state_dict.items() if k in ours}
        unknown = [k for k in state_dict if not is_ivlp_trainable(k) and k not in ours
                   and k.rsplit(".", 1)[-1] not in self.class_dependent_buffers]
        if unknown:
            print(f"Warning: checkpoint keys not in this model, ignored: {unknown[:4]}")
        if frozen:
            self.fold_frozen_tensors(None)
            self.save_pristine_frozen()
            with torch.no_grad():
                for key, value in frozen.items():
                    if value.shape != ours[key].shape:
                        raise CheckpointMismatch(f"Checkpoint tensor '{key}' has shape {tuple(value.shape)}, the backbone "
                                         f"{self.cfg.MODEL.BACKBONE.NAME} {tuple(ours[key].shape)}: the file was "
                                         "trained with another CLIP (set MODEL.BACKBONE.NAME to it)")
                    ours[key].copy_(value)
            print(f"Loaded {len(frozen)} frozen CLIP tensors from the whole-model checkpoint (as the official loader)")
        else:
            self.fold_frozen_tensors(Aggregation.from_tensor(record) if record is not None else None)
        self.gpa_record = Aggregation.from_tensor(record) if record is not None else None

    def resume_model_if_exist(self, directory):
        start_epoch = super().resume_model_if_exist(directory)
        if start_epoch >= self.max_epoch and self.gpa_record == self.aggregation:
            # A finished run re-run: its test sees the aggregated token buffers, as the first run's did.
            self.fold_frozen_tensors(self.aggregation, class_buffers=True)
        return start_epoch

    def extra_resume_state(self):
        return {"gpa_epochs": self.gpa_epochs, "gpa_accumulator": self.gpa_accumulator}

    def load_extra_resume_state(self, state):
        self.gpa_epochs = state["gpa_epochs"]
        self.gpa_accumulator = {k: v.to(self.device) for k, v in state["gpa_accumulator"].items()}
        print(f"Restored the GPA accumulator ({self.gpa_epochs} epochs)")
