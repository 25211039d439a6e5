"""Zero-shot CLIP with the per-dataset hand-crafted template (docs/methods/zsclip.md).

No training: run with `--eval-only` and a CoOp config (for the transforms and backbone).
Text features of `template.format(classname)` are computed once, at the first evaluation, on
the run's device.
"""
import torch

from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.prompting import PromptedCLIP
from trainers.templates import template_for, template_prompts


class ZeroshotCLIPModel(PromptedCLIP):
    """Frozen CLIP whose class embeddings are the hand-crafted prompts' text features."""

    def __init__(self, clip_model, classnames, template):
        super().__init__(clip_model)
        prompts = template_prompts(clip_model.token_embedding, template, classnames, self.dtype)
        print(f"Prompts: {prompts.texts}")
        # buffers follow the model to its device, where the features are computed (on first use)
        self.register_buffer("prompt_embeddings", prompts.embedding, persistent=False)  # (n_cls, 77, width)
        self.register_buffer("tokenized_prompts", prompts.tokenized, persistent=False)
        self.text_features = None

    def encode_text(self):
        if self.text_features is None:  # the hand-crafted prompts never change
            with torch.no_grad():
                self.text_features = self.text_encoder(self.prompt_embeddings, self.tokenized_prompts)
        return self.text_features


@TRAINERS.register("ZeroshotCLIP")
class ZeroshotCLIP(TrainerBase):
    """Evaluation-only trainer; nothing is trainable or saved."""

    config_node = "COOP"  # run with a CoOp config: its PREC applies
    trainable = ()

    def build_model(self, clip_model, classnames):
        return ZeroshotCLIPModel(clip_model, classnames, template_for(self.cfg.DATASET.NAME))

    def load_model(self, directory, epoch=None):
        print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
