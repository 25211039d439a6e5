"""DGPrompt (reconstructed): Dual-Guidance Prompts Generation for Vision-Language Models.

Zheng et al., Neural Networks 188, 107472 (2025), doi 10.1016/j.neunet.2025.107472; no arXiv
version, code or full text is public. This is the labelled reconstruction of
the method as described in docs/methods/dgprompt.md, reported as "DGPrompt (reconstructed)".

IVLP-style deep prompts in both towers (MaPLe insertion, no coupling), where every layer's
prompt is a learned base prompt plus a generated residual that reads the *other* frozen tower
at the same depth: text-guided visual prompts (TGV: cross-attention from the base visual
prompts to frozen layer-l text features of the current class names) and image-guided text
prompts (IGT: a per-layer meta-net on the frozen image's layer-l CLS feature, so text prompts
are per image; IGT False makes them instance-agnostic at MaPLe's cost). Generators start at
zero output. A retention loss (PromptSRC-style L1 on both features plus KL on the logits,
against frozen CLIP with the dataset template) restrains tuning. `DPC_DGPrompt` (trainers/dpc.py)
puts DPC on top. Deviations: README "Differences from the official code".
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.registry import TRAINERS
from engine.trainer import TrainerBase
from trainers.deep_prompting import DeepPromptedVisionEncoder, check_prompt_depth, tower_sizes
from trainers.prompting import (PromptedCLIP, assemble_prompts, build_class_prompts, eot_indices, init_context,
                                mark_shared_prefix, normalize, run_block)
from trainers.templates import template_for, template_prompts

NAME = "DGPrompt (reconstructed)"


def add_dgprompt_config(cfg):
    cfg.TRAINER.DGPROMPT = CN()
    cfg.TRAINER.DGPROMPT.N_CTX_T = 4                # text prompt tokens per layer
    cfg.TRAINER.DGPROMPT.N_CTX_V = 4                # vision prompt tokens per layer
    cfg.TRAINER.DGPROMPT.DEPTH = 9                  # J: prompted layers in both towers (input included)
    cfg.TRAINER.DGPROMPT.CTX_INIT = "a photo of a"  # layer-1 text base prompt (MaPLe rule: if N_CTX_T <= 4)
    cfg.TRAINER.DGPROMPT.TGV = True                 # text-guided visual prompts
    cfg.TRAINER.DGPROMPT.TGV_DIM = 128              # TGV single-head attention width
    cfg.TRAINER.DGPROMPT.IGT = True                 # image-guided (per-image) text prompts
    cfg.TRAINER.DGPROMPT.IGT_HIDDEN = 128           # IGT meta-net hidden width
    cfg.TRAINER.DGPROMPT.TEXT_LOSS_WEIGHT = 25.0    # retention: L1(text features, frozen CLIP's)
    cfg.TRAINER.DGPROMPT.IMAGE_LOSS_WEIGHT = 10.0   # retention: L1(image features, frozen CLIP's)
    cfg.TRAINER.DGPROMPT.KL_WEIGHT = 1.0            # retention: KL(zero-shot || ours) over the logits
    cfg.TRAINER.DGPROMPT.RET_FUSE = 0.0             # test logits (1 - b) z + b z_zero-shot (ablation)
    cfg.TRAINER.DGPROMPT.TRUNCATE_TEXT = True       # run text only up to the last EOT (same features)
    cfg.TRAINER.DGPROMPT.CLASS_CHUNK = 100          # with IGT, classes per text pass at test (0 = all)
    cfg.TRAINER.DGPROMPT.PREC = "fp16"              # fp16 | fp32 | amp | bf16


def retention_loss(text_features, zs_text_features, image_features, zs_image_features, logits, zs_logits,
                   weights=(25.0, 10.0, 1.0)):
    """Retention against frozen CLIP, in fp32.

    text_features (B, C, E) per image or (C, E); zs_text_features (C, E); image features (B, E):
    all L2-normalised. logits, zs_logits (B, C). weights: (text L1, image L1, KL).
    KL(softmax(z0) || softmax(z)) is summed and divided by numel(z), as PromptSRC does.
    """
    text_weight, image_weight, kl_weight = weights
    text = F.l1_loss(text_features.float(), zs_text_features.float().expand_as(text_features))
    image = F.l1_loss(image_features.float(), zs_image_features.float())
    kl = F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(zs_logits.float(), dim=1),
                  reduction="sum", log_target=True) / logits.numel()
    return text_weight * text + image_weight * image + kl_weight * kl


class DGPromptTGV(nn.Module):
    """One layer's text-guided visual residual: single-head cross-attention to class text features."""

    def __init__(self, vision_width, text_width, dim):
        super().__init__()
        self.q = nn.Linear(vision_width, dim, bias=False)
        self.k = nn.Linear(text_width, dim, bias=False)
        self.v = nn.Linear(text_width, dim, bias=False)
        self.o = nn.Linear(dim, vision_width)
        nn.init.zeros_(self.o.weight)  # zero output: training starts at the base prompts
        nn.init.zeros_(self.o.bias)

    def forward(self, base, context):
        """base (M, vision_width), context (C, text_width) -> residual (M, vision_width)."""
        attention = (self.q(base) @ self.k(context).t() / self.q.out_features ** 0.5).softmax(dim=-1)  # (M, C)
        return self.o(attention @ self.v(context))


def igt_meta_net(vision_width, text_width, hidden):
    """One layer's image-guided text shift (CoCoOp's meta-net shape), zero output at init."""
    net = nn.Sequential(nn.Linear(vision_width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text_width))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


class DGPromptLearner(nn.Module):
    """Base prompts of both towers, the two generators, and the class-name token buffers."""

    def __init__(self, dgprompt_cfg, classnames, clip_model):
        super().__init__()
        sizes = tower_sizes(clip_model)
        depth = dgprompt_cfg.DEPTH
        check_prompt_depth("TRAINER.DGPROMPT.DEPTH", depth, min(sizes.text_layers, sizes.vision_layers))
        print(f"{NAME}: depth {depth}, {dgprompt_cfg.N_CTX_T}+{dgprompt_cfg.N_CTX_V} tokens, "
              f"TGV {dgprompt_cfg.TGV}, IGT {dgprompt_cfg.IGT}")
        init = init_context(clip_model, dgprompt_cfg.N_CTX_T, dgprompt_cfg.CTX_INIT, phrase_sets_length=False)
        # Base prompts C_t^l, C_v^l for l = 1..J (fp32; cast to the activation dtype at injection).
        ctx_text = torch.empty(depth, init.n_ctx, sizes.text_width)
        nn.init.normal_(ctx_text, std=0.02)
        ctx_text[0] = init.ctx.float()  # layer 1 from the phrase (or its own N(0, 0.02^2) draw)
        self.ctx_text = nn.Parameter(ctx_text)                                       # (J, M_t, text_width)
        self.ctx_vision = nn.Parameter(torch.empty(depth, dgprompt_cfg.N_CTX_V, sizes.vision_width))
        nn.init.normal_(self.ctx_vision, std=0.02)                                    # (J, M_v, vision_width)
        if dgprompt_cfg.TGV:
            self.tgv = nn.ModuleList(DGPromptTGV(sizes.vision_width, sizes.text_width, dgprompt_cfg.TGV_DIM)
                                     for _ in range(depth))
        if dgprompt_cfg.IGT:
            self.igt = nn.ModuleList(igt_meta_net(sizes.vision_width, sizes.text_width, dgprompt_cfg.IGT_HIDDEN)
                                     for _ in range(depth))

        prompts = build_class_prompts(clip_model, classnames, init.prompt_prefix, init.n_ctx)
        self.register_buffer("token_prefix", prompts.token_prefix)  # SOT: (n_cls, 1, text_width)
        self.register_buffer("token_suffix", prompts.token_suffix)  # class name, '.', EOT, padding
        self.tokenized_prompts = prompts.tokenized                    # (n_cls, 77)

    def vision_prompts(self, text_context):
        """P_v^l = C_v^l + TGV_l(C_v^l, T^l): (J, M_v, vision_width). text_context: (J, C, text_width)."""
        if not hasattr(self, "tgv"):
            return self.ctx_vision
        residual = [tgv(base, context.float()) for tgv, base, context in zip(self.tgv, self.ctx_vision, text_context)]
        return self.ctx_vision + torch.stack(residual)

    def text_prompts(self, image_context=None):
        """P_t^l(x) = C_t^l + g_l(V^l(x)) on every token: (B, J, M_t, text_width); (J, M_t, width) without IGT.

        image_context: (J, B, vision_width).
        """
        if not hasattr(self, "igt"):
            return self.ctx_text
        shift = torch.stack([net(context.float()) for net, context in zip(self.igt, image_context)], dim=1)
        return self.ctx_text + shift.unsqueeze(2)                                     # (B, J, M_t, width)


@dataclass
class DGPromptOutput:
    logits: torch.Tensor             # (B, C)
    image_features: torch.Tensor     # (B, E), normalised
    text_features: torch.Tensor      # (B, C, E) with IGT, else (C, E); normalised
    zs_image_features: torch.Tensor  # (B, E) frozen CLIP, normalised; None when not needed
    zs_text_features: torch.Tensor   # (C, E) frozen CLIP with the dataset template, normalised


class DGPromptModel(PromptedCLIP):
    """Frozen CLIP, its frozen layer-wise context, and DGPrompt's generated deep prompts."""

    frozen_image_encoder = False

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        dgprompt_cfg = cfg.TRAINER.DGPROMPT
        self.prompt_learner = DGPromptLearner(dgprompt_cfg, classnames, clip_model)
        self.image_encoder = DeepPromptedVisionEncoder(clip_model.visual)
        self.depth, self.igt = dgprompt_cfg.DEPTH, dgprompt_cfg.IGT
        self.truncate, self.class_chunk = dgprompt_cfg.TRUNCATE_TEXT, dgprompt_cfg.CLASS_CHUNK
        self.ret_fuse = dgprompt_cfg.RET_FUSE
        self.retention_weights = (dgprompt_cfg.TEXT_LOSS_WEIGHT, dgprompt_cfg.IMAGE_LOSS_WEIGHT, dgprompt_cfg.KL_WEIGHT)
        # Frozen context and anchors come from the dataset's hand-crafted sentence.
        anchors = template_prompts(clip_model.token_embedding, template_for(cfg.DATASET.NAME), classnames, self.dtype)
        self.anchor_tokens = anchors.tokenized                                            # (n_cls, 77)
        self.register_buffer("anchor_embeddings", anchors.embedding, persistent=False)  # (n_cls, 77, text_width)
        self.cached_text_context = None

    # -- frozen context (no gradient) -----------------------------------------------------
    @torch.no_grad()
    def frozen_layers(self, encoder, *inputs, **encoder_options):
        """Frozen, un-prompted features and the residual streams after blocks 1..J (LND)."""
        states = []

        def record(layer, block, x, mask):
            x = run_block(block, x, mask)
            if layer < self.depth:
                states.append(x)
            return x

        return encoder(*inputs, block_fn=record, **encoder_options), states

    def text_context(self):
        """T^l (J, C, text_width) = LN0 of the EOT stream after block l, and f_t^0 (C, E); once per class set."""
        if self.cached_text_context is None:
            features, states = self.frozen_layers(self.text_encoder, self.anchor_embeddings, self.anchor_tokens,
                                                  truncate=self.truncate)
            eot = eot_indices(self.anchor_tokens).to(features.device)
            classes = torch.arange(len(eot), device=features.device)
            context = torch.stack([F.layer_norm(x[eot, classes].float(), x.shape[-1:]) for x in states])
            self.cached_text_context = context, normalize(features)
        return self.cached_text_context

    def image_context(self, images):
        """V^l(x) (J, B, vision_width) = LN0 of the CLS stream after block l, and f_v^0 (B, E)."""
        features, states = self.frozen_layers(self.image_encoder, images.type(self.dtype))
        context = torch.stack([F.layer_norm(x[0].float(), x.shape[-1:]) for x in states])
        return context, normalize(features)

    # -- prompted towers ------------------------------------------------------------------
    def encode_image(self, images):
        prompts = self.prompt_learner.vision_prompts(self.text_context()[0])  # (J, M_v, width)
        return self.image_encoder(images.type(self.dtype), prompts[0], list(prompts[1:]))

    def encode_text(self, image_context=None, classes=slice(None)):
        """Text features of `classes`: (C, E), or (B, C, E) per image with IGT (needs `image_context`)."""
        learner = self.prompt_learner
        if self.igt and image_context is None:
            raise ValueError("DGPrompt with IGT has image-conditioned text features: pass the image context")
        prompts = learner.text_prompts(image_context)        # (J, M, width) or (B, J, M, width)
        token_prefix, token_suffix = learner.token_prefix[classes], learner.token_suffix[classes]
        tokenized = learner.tokenized_prompts[classes]
        if self.truncate:  # tokens after the last EOT never reach an EOT: do not even build them
            length = int(eot_indices(tokenized).max()) + 1
            token_suffix = token_suffix[:, :length - 1 - prompts.shape[-2]]  # after SOT and the prompt tokens
        if not self.igt:
            class_prompts = assemble_prompts(prompts[0].type(self.dtype), token_prefix, token_suffix)
            return self.text_encoder(class_prompts, tokenized, list(prompts[1:]), truncate=self.truncate)
        # One sequence per (image, class), image-major: (B * C, L, width). SOT and the prompt tokens
        # are one tensor per image: the encoder runs them once per image, not once per class.
        n_img, n_cls, n_ctx = prompts.shape[0], token_prefix.shape[0], prompts.shape[2]

        def per_sequence(t):  # (B, n, width) -> (B * C, n, width)
            return t.unsqueeze(1).expand(-1, n_cls, -1, -1).reshape(n_img * n_cls, *t.shape[1:])

        first = per_sequence(prompts[:, 0].type(self.dtype))
        sequences = torch.cat([token_prefix.repeat(n_img, 1, 1), first, token_suffix.repeat(n_img, 1, 1)], dim=1)
        mark_shared_prefix(sequences, 1 + n_ctx, groups=n_img)
        deep = [mark_shared_prefix(per_sequence(prompts[:, layer]), n_ctx, groups=n_img)
                for layer in range(1, prompts.shape[1])]
        features = self.text_encoder(sequences, tokenized.repeat(n_img, 1), deep, truncate=self.truncate)
        return features.view(n_img, n_cls, -1)

    def predict(self, images, text_features=None):
        """Logits and the normalised features the retention loss compares (`text_features`: cached, IGT off)."""
        needs_anchor = self.igt or (self.training and any(self.retention_weights)) or \
            (not self.training and self.ret_fuse > 0)
        image_context, zs_image = self.image_context(images) if needs_anchor else (None, None)
        zs_text = self.text_context()[1]
        scale = self.logit_scale.exp()
        image_features = normalize(self.encode_image(images))                  # (B, E)
        if self.igt:
            n_cls = zs_text.shape[0]
            chunk = self.class_chunk if not self.training and self.class_chunk > 0 else n_cls
            text_features = torch.cat([normalize(self.encode_text(image_context, slice(start, start + chunk)))
                                       for start in range(0, n_cls, chunk)], dim=1)   # (B, C, E)
            logits = ((scale * image_features).unsqueeze(1) @ text_features.transpose(1, 2)).squeeze(1)
        else:
            text_features = normalize(self.encode_text() if text_features is None else text_features)  # (C, E)
            logits = scale * image_features @ text_features.t()
        if not self.training and self.ret_fuse > 0:
            logits = (1 - self.ret_fuse) * logits + self.ret_fuse * (scale * zs_image @ zs_text.t())
        return DGPromptOutput(logits, image_features, text_features, zs_image, zs_text)

    def forward(self, images, text_features=None):
        return self.predict(images, text_features).logits

    def loss(self, images, labels):
        """Training loss CE + retention, in fp32, and the logits."""
        out = self.predict(images)
        loss = F.cross_entropy(out.logits.float(), labels)
        if any(self.retention_weights):
            zs_logits = self.logit_scale.exp() * out.zs_image_features @ out.zs_text_features.t()
            loss = loss + retention_loss(out.text_features, out.zs_text_features, out.image_features,
                                         out.zs_image_features, out.logits, zs_logits, self.retention_weights)
        return loss, out.logits


@TRAINERS.register("DGPrompt", config=add_dgprompt_config)
class DGPrompt(TrainerBase):
    """DGPrompt (reconstructed): trains the base prompts and both generators; CE plus retention."""

    config_node = "DGPROMPT"
    checkpoint_name = "prompt_learner"
    trainable = ("prompt_learner.",)

    def build_model(self, clip_model, classnames):
        return DGPromptModel(self.cfg, classnames, clip_model)

    def cached_text_features(self):
        """With IGT the text features depend on the image: nothing to compute once."""
        return None if self.model.igt else super().cached_text_features()

    def compute_loss(self, batch):
        return self.model.loss(batch.images, batch.labels)
