"""KgCoOp: Visual-Language Prompt Tuning with Knowledge-guided Context Optimization
(Yao et al., CVPR 2023, arXiv 2303.13283).

CoOp plus one regulariser: the learned prompts' text features are pulled towards the frozen
hand-crafted CLIP text features of the same classes ("knowledge"), which keeps new-class
accuracy close to zero-shot CLIP. Details: docs/methods/kgcoop.md. Deviations: README "Differences".
"""
import copy

import torch
import torch.nn.functional as F

from engine.clip_loading import clip
from engine.config import add_key_aliases
from engine.errors import ConfigError
from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.coop import CoOpPromptLearner, add_coop_config
from trainers.prompting import PromptedCLIP, PromptedTextEncoder, normalize
from trainers.templates import KGCOOP_TEMPLATES, template_for, template_prompts

KG_LOSSES = ("code", "paper")


def add_kgcoop_config(cfg):
    if "COOP" not in cfg.TRAINER:  # KgCoOp extends CoOp's node; keep CoOp's keys if already there
        add_coop_config(cfg)
    cfg.TRAINER.COOP.W = 1.0            # weight of the knowledge-guided term (8.0 for base-to-new)
    cfg.TRAINER.COOP.ALPHA = 1.0        # declared by the official code, unused
    cfg.TRAINER.COOP.KG_LOSS = "code"   # code: 1 - mean cos (released) | paper: mean squared L2 distance


def official_ctx_init(value):
    """KgCoOp's YAML and CLI write `CTX_INIT` as a boolean: True means the phrase "a photo of a",
    False random init. Phrases pass through unchanged."""
    if value is True or value == "True":
        value = "a photo of a"
    elif value is False or value == "False":
        value = ""
    return [("TRAINER.COOP.CTX_INIT", value)]


add_key_aliases({"TRAINER.COOP.CTX_INIT": official_ctx_init})


def handcrafted_text_features(clip_model, classnames, template, device):
    """L2-normalised CLIP text features of `template` per class, (n_cls, embed_dim), fp16.

    Reference behaviour: a second CLIP, fp16 in every PREC, computes them once.
    We reuse the frozen CLIP's weights through an fp16 copy of its text tower, run on `device`.
    """
    encoder = copy.deepcopy(PromptedTextEncoder(clip_model))
    clip.model.convert_weights(encoder)  # exact: the loaded weights were fp16
    encoder.dtype = torch.float16
    prompts = template_prompts(clip_model.token_embedding, template, classnames, torch.float16)
    with torch.no_grad():
        # all 77 positions, as the reference's encode_text: bit-identical features, once per run
        features = encoder.to(device)(prompts.embedding.to(device), prompts.tokenized.to(device), truncate=False)
    return normalize(features).cpu()


class KgCoOpPromptLearner(CoOpPromptLearner):
    """CoOp's prompt learner, always assembled in `end` order."""

    def __init__(self, coop_cfg, classnames, clip_model):
        super().__init__(coop_cfg, classnames, clip_model)
        self.position = "end"  # Reference behaviour: CLASS_TOKEN_POSITION is read but ignored


class KgCoOpModel(PromptedCLIP):
    """CoOp's model plus the frozen hand-crafted text features the regulariser compares with."""

    def __init__(self, cfg, classnames, clip_model, device="cpu"):
        super().__init__(clip_model)
        self.prompt_learner = KgCoOpPromptLearner(cfg.TRAINER.COOP, classnames, clip_model)
        template = template_for(cfg.DATASET.NAME, KGCOOP_TEMPLATES)
        features = handcrafted_text_features(clip_model, classnames, template, device)
        self.register_buffer("clip_text_features", features, persistent=False)  # (n_cls, embed_dim), fp16

    def encode_text(self):
        return self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized_prompts)

    def knowledge_score(self, text_features, form="code"):
        """Distance of the learned prompts' features to the hand-crafted ones, over all classes.

        code (released): 1 - mean_c cos(t_c, w_c); paper: mean_c ||t_c - w_c||^2 on unit vectors,
        which is twice the code's value.
        """
        t, w = normalize(text_features), normalize(self.clip_text_features)
        if form == "code":
            return 1.0 - torch.mean(F.cosine_similarity(t, w, dim=1, eps=1e-7))
        return (t - w).pow(2).sum(dim=-1).mean()


@TRAINERS.register("KgCoOp", config=add_kgcoop_config)
class KgCoOp(TrainerBase):
    """Optimises `prompt_learner.ctx` with CE + W * knowledge score; checkpoints as CoOp's."""

    config_node = "COOP"  # KgCoOp's keys extend CoOp's node, as in the official code
    trainable = ("prompt_learner.ctx",)

    def build_model(self, clip_model, classnames):
        if self.cfg.TRAINER.COOP.KG_LOSS not in KG_LOSSES:
            raise ConfigError(f"TRAINER.COOP.KG_LOSS must be one of {KG_LOSSES}, got {self.cfg.TRAINER.COOP.KG_LOSS!r}")
        return KgCoOpModel(self.cfg, classnames, clip_model, self.device)

    def compute_loss(self, batch):
        coop_cfg = self.cfg.TRAINER.COOP
        text_features = self.model.encode_text()  # all classes of the split, every step
        logits = self.model(batch.images, text_features=text_features)
        score = self.model.knowledge_score(text_features, coop_cfg.KG_LOSS)
        return F.cross_entropy(logits, batch.labels) + coop_cfg.W * score, logits

    def load_checkpoint_state_dict(self, state_dict):
        # Official files also hold the unused `bias_vectors` and `meta_net.*`.
        super().load_checkpoint_state_dict(
            {k: v for k, v in state_dict.items() if k != "bias_vectors" and not k.startswith("meta_net.")})
