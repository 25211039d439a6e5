"""Zero-shot CLIP with the per-dataset hand-crafted template (coop.md §2).

No training: run with `--eval-only` and a CoOp config (for the transforms and backbone).
Text features of `template.format(classname)` are computed once at build time.
"""
import torch

from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.prompting import PromptedCLIP, class_text, encode_token_ids, tokenize
from trainers.templates import template_for


class ZeroshotCLIPModel(PromptedCLIP):
    """Frozen CLIP whose class embeddings are the hand-crafted prompts' text features."""

    def __init__(self, clip_model, classnames, template):
        super().__init__(clip_model)
        prompts = [template.format(class_text(name)) for name in classnames]
        print(f"Prompts: {prompts}")
        with torch.no_grad():
            text_features = encode_token_ids(self.text_encoder, clip_model.token_embedding, tokenize(prompts))
        self.register_buffer("text_features", text_features, persistent=False)  # (n_cls, embed_dim)

    def encode_text(self):
        return self.text_features


@TRAINERS.register("ZeroshotCLIP")
class ZeroshotCLIP(TrainerBase):
    """Evaluation-only trainer; nothing is trainable or saved."""

    trainable = ()

    def build_model(self, clip_model, classnames):
        return ZeroshotCLIPModel(clip_model, classnames, template_for(self.cfg.DATASET.NAME))

    def load_model(self, directory, epoch=None):
        print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
