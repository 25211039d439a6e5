"""MyMethod: an example of a complete trainer kept outside the repository, in one file.

Not a published method. Frozen CLIP classifies with the text features of the dataset's
hand-crafted template, blended with a small bottleneck MLP applied to them (the text branch of
CLIP-Adapter, Gao et al., IJCV 2023, arXiv 2110.04544). The adapter is shared by all classes,
so what it learns on the base classes applies to the new ones.

    python train.py --trainer-module examples/my_method.py --trainer MyMethod \
        --config-file examples/MyMethod.yaml --dataset-config-file configs/datasets/dtd.yaml ...
    TRAINER_MODULE=examples/my_method.py bash scripts/sweep.sh MyMethod:examples/MyMethod.yaml all all
    python parse_results.py output/
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.prompting import PromptedCLIP, normalize
from trainers.templates import template_for, template_prompts


def add_mymethod_config(cfg):
    cfg.TRAINER.MYMETHOD = CN()
    cfg.TRAINER.MYMETHOD.REDUCTION = 4  # bottleneck width = embed_dim // REDUCTION
    cfg.TRAINER.MYMETHOD.RATIO = 0.2    # text features = (1 - RATIO) * template + RATIO * adapter(template)
    cfg.TRAINER.MYMETHOD.PREC = "fp16"  # fp16 | fp32 | amp | bf16


class MyMethodAdapter(nn.Module):
    """Bottleneck MLP on text features (embed_dim -> embed_dim // reduction -> embed_dim)."""

    def __init__(self, dim, reduction, dtype):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True)).to(dtype)

    def forward(self, x):
        return self.fc(x)


class MyMethodModel(PromptedCLIP):
    """Frozen CLIP; class embeddings = template features blended with their adapted version."""

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        mymethod_cfg = cfg.TRAINER.MYMETHOD
        prompts = template_prompts(clip_model.token_embedding, template_for(cfg.DATASET.NAME), classnames, self.dtype)
        with torch.no_grad():  # fixed features: no graph kept from the frozen text tower
            features = normalize(self.text_encoder(prompts.embedding, prompts.tokenized))
        # Depends on the class names, so it is rebuilt for the new classes and never saved.
        self.register_buffer("text_features", features, persistent=False)  # (n_cls, embed_dim)
        self.adapter = MyMethodAdapter(features.shape[-1], mymethod_cfg.REDUCTION, self.dtype)
        self.ratio = mymethod_cfg.RATIO

    def encode_text(self):
        return (1 - self.ratio) * self.text_features + self.ratio * self.adapter(self.text_features)


@TRAINERS.register("MyMethod", config=add_mymethod_config)
class MyMethod(TrainerBase):
    """Trains only the adapter; checkpoints are `adapter/model.pth.tar-<epoch>`."""

    config_node = "MYMETHOD"
    checkpoint_name = "adapter"
    trainable = ("adapter",)

    def build_model(self, clip_model, classnames):
        return MyMethodModel(self.cfg, classnames, clip_model)

    def checkpoint_module(self):
        return self.model.adapter

    def compute_loss(self, batch):
        logits = self.model(batch.images)
        return F.cross_entropy(logits, batch.labels), logits
