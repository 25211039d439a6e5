"""CoOp: Learning to Prompt for Vision-Language Models (Zhou et al., IJCV 2022, arXiv 2109.01134).

Learns N_CTX context vectors (shared, or one set per class with CSC) placed around the
class name; CLIP stays frozen and the loss is cross-entropy. Details: docs/methods/coop.md.
Deviations from the official code: README "Differences from the official code".
"""
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.prompting import PromptedCLIP, assemble_prompts, build_class_prompts, init_context


def add_coop_config(cfg):
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16                    # number of context tokens (a phrase overrides it)
    cfg.TRAINER.COOP.CSC = False                   # class-specific context (random init only)
    cfg.TRAINER.COOP.CTX_INIT = ""                 # e.g. "a photo of a"; "" = N(0, 0.02^2)
    cfg.TRAINER.COOP.PREC = "fp16"                 # fp16 | fp32 | amp | bf16
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front


class CoOpPromptLearner(nn.Module):
    """Learned context `ctx` plus the frozen class-name tokens around it."""

    def __init__(self, coop_cfg, classnames, clip_model):
        super().__init__()
        init = init_context(clip_model, coop_cfg.N_CTX, coop_cfg.CTX_INIT,
                            n_cls=len(classnames) if coop_cfg.CSC else None)
        self.ctx = nn.Parameter(init.ctx)  # (n_ctx, dim) or (n_cls, n_ctx, dim)
        self.n_ctx = init.n_ctx
        prompts = build_class_prompts(clip_model, classnames, init.prompt_prefix, init.n_ctx)
        self.register_buffer("token_prefix", prompts.token_prefix)  # SOT: (n_cls, 1, dim)
        self.register_buffer("token_suffix", prompts.token_suffix)  # class name, '.', EOT, padding
        self.tokenized_prompts = prompts.tokenized                    # (n_cls, 77)
        self.name_lens = prompts.name_lens
        self.position = coop_cfg.CLASS_TOKEN_POSITION

    def forward(self, ctx=None):
        """Class prompts (n_cls, 77, dim) built around `ctx` (default: the learned one)."""
        return assemble_prompts(self.ctx if ctx is None else ctx, self.token_prefix, self.token_suffix,
                                self.name_lens, self.position)


class CoOpModel(PromptedCLIP):
    """Frozen CLIP with a CoOp prompt learner on the text side."""

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(cfg.TRAINER.COOP, classnames, clip_model)

    def encode_text(self):
        return self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized_prompts)


@TRAINERS.register("CoOp", config=add_coop_config)
class CoOp(TrainerBase):
    """Optimises only `prompt_learner.ctx`; checkpoints hold `ctx`, `token_prefix`, `token_suffix`."""

    config_node = "COOP"
    trainable = ("prompt_learner.ctx",)

    def build_model(self, clip_model, classnames):
        return CoOpModel(self.cfg, classnames, clip_model)

    def compute_loss(self, batch):
        logits = self.model(batch.images)
        return F.cross_entropy(logits, batch.labels), logits
