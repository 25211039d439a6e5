"""DPC: hard-negative sampler, contrastive loss, picture library, weighting-decoupling, SPLE keys."""
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import trainers  # noqa: F401  (registers DPC and its SPLE.* aliases)
from engine.checkpoint import load_checkpoint
from engine.config import build_cfg, merge_from_file, merge_from_list, setup_cfg
from engine.errors import CheckpointError
from engine.registry import TRAINERS
from engine.trainer import build_trainer, set_random_seed
from tests.helpers.tiny_clip import make_tiny_clip
from train import build_parser
from trainers.dpc import (DPCMixin, HardNegativeSampler, contrastive_loss, negatives_for_anchor, read_picture_library,
                          substituted_parameters, write_picture_library)


# ---- the sampler on hand-built similarity matrices ------------------------

def probs_ranking(*rankings, num_classes):
    """A (B, C) similarity matrix whose rows rank the given classes first, in that order."""
    probs = torch.zeros(len(rankings), num_classes)
    for row, ranking in enumerate(rankings):
        for position, c in enumerate(ranking):
            probs[row, c] = 1.0 - 0.1 * position
    return probs.softmax(dim=1)


@pytest.fixture
def library(tmp_path):
    """Six classes with three 2x2 images each; pixel value = 10 * class + index identifies the file."""
    paths = {}
    for c in range(6):
        for i in range(3):
            path = tmp_path / f"class{c}" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((2, 2, 3), 10 * c + i, dtype=np.uint8)).save(path)
            paths.setdefault(f"class{c}", []).append(str(path))
    return paths


def make_sampler(library, topk, **flags):
    return HardNegativeSampler(library, sorted(library), T.ToTensor(), topk, **flags)


def image_ids(images):
    return [round(v) for v in (images[:, 0, 0, 0] * 255).tolist()]


def test_candidates_non_repeat_and_fallback_draws(library):
    """Anchor 0: top-4 minus its class, all new. Anchor 1: one unused candidate, then a fallback whose
    C - 2 = 4 draws from randint(1, 4) all hit used classes. Anchor 2: its class is not in the top-4,
    so all 4 become candidates (the K - 1 cap does not act), all used already; 4 more draws."""
    sampler = make_sampler(library, topk=4)
    anchors = torch.stack([torch.full((3, 2, 2), -1.0 - b) for b in range(3)])
    labels = torch.tensor([0, 1, 0])
    probs = probs_ranking([2, 0, 3, 4], [1, 2, 5, 3], [5, 4, 3, 2], num_classes=6)
    random.seed(0)
    images, targets = sampler(anchors, labels, probs)
    after = random.getstate()

    assert targets.tolist() == [0, 2, 3, 4, 1, 5, 0]
    random.seed(0)  # replay the reference's order: per anchor, fallback randints, then one pick per negative
    picks = [random.choice(range(3)) for _ in range(3)]
    [random.randint(1, 4) for _ in range(4)]
    picks.append(random.choice(range(3)))
    [random.randint(1, 4) for _ in range(4)]
    assert random.getstate() == after
    assert image_ids(images[[1, 2, 3, 5]]) == [20 + picks[0], 30 + picks[1], 40 + picks[2], 50 + picks[3]]
    assert torch.equal(images[[0, 4, 6]], anchors)  # anchors are the loader's own views


def test_without_non_repeat_anchors_share_negatives(library):
    """NON_REPEAT False (SPLE.INFER_NONREPEAT False, ignored by the reference): each anchor takes
    its whole top-K minus its own class, whatever other anchors took."""
    sampler = make_sampler(library, topk=3, non_repeat=False)
    anchors = torch.stack([torch.full((3, 2, 2), -1.0 - b) for b in range(2)])
    probs = probs_ranking([0, 2, 3], [1, 2, 3], num_classes=6)
    random.seed(0)
    _, targets = sampler(anchors, torch.tensor([0, 1]), probs)
    assert targets.tolist() == [0, 2, 3, 1, 2, 3]
    random.seed(0)
    _, targets = make_sampler(library, topk=3)(anchors, torch.tensor([0, 1]), probs)
    assert targets.tolist()[:3] == [0, 2, 3] and 2 not in targets.tolist()[4:] and 3 not in targets.tolist()[4:]


def test_fallback_makes_one_extra_draw_after_the_second_acceptance():
    random.seed(43)
    assert [random.randint(1, 4) for _ in range(4)] == [1, 3, 2, 4]
    random.seed(43)
    used = [0]
    # Top-2 = [0, 1]: one candidate; fallback draws 1 (used), 3 (accepted), then 2 (made, discarded).
    assert negatives_for_anchor([0, 1], 0, used, num_classes=6) == [1, 3]
    assert used == [0, 1, 3]
    after = random.getstate()
    random.seed(43)
    [random.randint(1, 4) for _ in range(3)]
    assert random.getstate() == after


def test_fallback_never_draws_the_first_or_last_class_and_may_end_empty():
    random.seed(2)  # randint(1, 2) draws 1, 2
    used = [1, 2]
    assert negatives_for_anchor([1], 1, used, num_classes=4) == []  # K = 1: no candidates at all
    assert used == [1, 2]  # classes 0 and 3 were free but can never be drawn


def test_strict_cap_and_top1():
    ranking = [4, 3, 2]  # label 0 is not in the top-3
    assert negatives_for_anchor(ranking, 0, [0], num_classes=6) == [4, 3, 2]
    assert negatives_for_anchor(ranking, 0, [0], num_classes=6, strict_cap=True) == [4, 3]


def test_fixed_fallback_fills_two_from_any_unused_class():
    random.seed(0)
    used = [1, 2, 3, 4]
    negatives = negatives_for_anchor([1], 1, used, num_classes=6, fallback="fixed")
    assert sorted(negatives) == [0, 5] and used == [1, 2, 3, 4, *negatives]


def test_dedup_drops_repeated_anchor_classes(library):
    sampler = make_sampler(library, topk=2, dedup_anchors=True)
    probs = probs_ranking([0, 1], [1, 2], [0, 3], num_classes=6)
    random.seed(0)
    images, targets = sampler(torch.zeros(3, 3, 2, 2), torch.tensor([0, 1, 0]), probs)
    assert targets.tolist().count(0) == 1 and targets.tolist()[0] == 0
    assert len(set(targets.tolist())) == len(targets) == images.shape[0]


def test_first_anchor_without_negatives_does_not_crash(library, capsys):
    """K = 1 gives no candidates and every class randint(1, 4) can draw is a label of the batch."""
    sampler = make_sampler(library, topk=1)
    labels = torch.tensor([5, 1, 2, 3, 4])
    probs = probs_ranking([5], [1], [2], [3], [4], num_classes=6)
    images, targets = sampler(torch.zeros(5, 3, 2, 2), labels, probs)
    assert targets[0] == 5 and targets[1] == 1  # anchor 0 has no negatives
    assert images.shape[0] == len(targets)
    assert "first anchor got no negatives" in capsys.readouterr().out


def test_library_missing_a_base_class_is_a_clear_error(library):
    with pytest.raises(ValueError, match="no images for base classes"):
        HardNegativeSampler(library, ["class0", "zebra"], T.ToTensor(), 2)


# ---- loss -----------------------------------------------------------------------------

def test_contrastive_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])

    def ce(rows):
        return sum(-row[i] + math.log(sum(math.exp(v) for v in row)) for i, row in enumerate(rows)) / len(rows)

    rows = logits.tolist()
    columns = logits.t().tolist()
    expected = (ce(rows) + ce(columns)) / 2
    assert contrastive_loss(logits).item() == pytest.approx(expected, rel=1e-6)


# ---- picture library ------------------------------------------------------

class Record:
    def __init__(self, impath, label, classname):
        self.impath, self.label, self.classname = impath, label, classname


def test_library_json_has_the_official_shape_and_reads_back(tmp_path):
    root = str(tmp_path / "images")
    records = [Record(os.path.join(root, f"{name}/image_{i:04d}.jpg"), label, name)
               for label, name in [(0, "face"), (1, "leopard")] for i in (2, 1)]
    path = tmp_path / "SPLE_Caltech101.json"
    write_picture_library(str(path), records, root)
    data = json.loads(path.read_text())
    assert set(data) == {"train", "val", "train_obj_list", "val_obj_list"}
    assert data["train"] == [{"face": [0, ["face/image_0002.jpg", "face/image_0001.jpg"]],
                              "leopard": [1, ["leopard/image_0002.jpg", "leopard/image_0001.jpg"]]}]
    assert data["train_obj_list"] == ["face", "leopard"]
    assert read_picture_library(str(path), root)["face"] == [records[0].impath, records[1].impath]


# ---- parameter substitution -----------------------------------------------------------

def test_substituted_parameters_route_gradients_and_restore():
    layer = torch.nn.Linear(2, 2)
    weight = layer.weight
    theta = torch.randn(2, 2, requires_grad=True)
    with substituted_parameters(layer, {"weight": theta * 3}):
        layer(torch.ones(1, 2)).sum().backward()
    assert layer.weight is weight and list(dict(layer.named_parameters())) == ["weight", "bias"]
    torch.testing.assert_close(theta.grad, torch.full((2, 2), 3.0))
    assert weight.grad is None


# ---- official SPLE.* keys -----------------------------------------------

def test_official_sple_keys_map_onto_ours(tmp_path):
    yaml = tmp_path / "vit_b16_ep20.yaml"
    yaml.write_text("SPLE:\n  INFER_TOPK: 4\n  INFER_NONREPEAT: False\n  PIC_LIB: lib.json\n"
                    "  SPLE_TRAINER:\n    SPLE_INIT: True\n    SPLE_BASE_TRAIN: True\n"
                    "  STACK:\n    MODE: loop+converse\n    WEIGHT: 0.5\n    WEIGHT_FOR_NEW: 0.0\n    LOOP_DEPTH: 0\n")
    cfg = build_cfg()
    merge_from_file(cfg, str(yaml))
    merge_from_list(cfg, ["SPLE.BACK_CKPT_PATH", "out/stage1", "SPLE.BACK_CKPT_EPOCH", "10",
                          "SPLE.STACK.MODE", "converse", "SPLE.STACK.WEIGHT", "0.2"])
    dpc = cfg.TRAINER.DPC
    assert (dpc.TOPK, dpc.PIC_LIB, dpc.WEIGHT_BASE, dpc.WEIGHT_NEW) == (4, "lib.json", 0.2, 0.0)
    assert (dpc.BACKBONE_DIR, dpc.BACKBONE_EPOCH) == ("out/stage1", 10)
    assert dpc.NON_REPEAT is False


def test_unsupported_sple_values_fail_clearly():
    with pytest.raises(ValueError, match="only DPC's 'converse' mode"):
        merge_from_list(build_cfg(), ["SPLE.STACK.MODE", "simple"])
    with pytest.raises(ValueError, match="SPLE_INIT False is not supported"):
        merge_from_list(build_cfg(), ["SPLE.SPLE_TRAINER.SPLE_INIT", "False"])


# ---- the plug-in on a trained CoOp (stage 1 on the Caltech101 fixture) ---------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE1_CONFIG = os.path.join(REPO, "configs", "trainers", "CoOp", "vit_b16_bs4_ep10_lr35.yaml")
STAGE2_CONFIG = os.path.join(REPO, "configs", "trainers", "DPC", "CoOp", "vit_b16_ep20.yaml")
DATASET_CONFIG = os.path.join(REPO, "configs", "datasets", "caltech101.yaml")


def build(data_root, tiny_clip_path, tiny_opts, output_dir, *opts, trainer="DPC_CoOp", config=STAGE2_CONFIG,
          subsample="base"):
    """A trainer as train.py builds it (seed 1, 2 shots, 4 context tokens)."""
    args = build_parser().parse_args([
        "--root", data_root, "--seed", "1", "--trainer", trainer, "--backbone", tiny_clip_path,
        "--dataset-config-file", DATASET_CONFIG,
        "--config-file", config, "--output-dir", str(output_dir), *tiny_opts, "DATASET.NUM_SHOTS", "2",
        "TRAINER.COOP.N_CTX", "4", "OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", subsample, *opts])
    cfg = setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@pytest.fixture(scope="module")
def stage1(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """A finished CoOp run on the base classes (the stage-1 backbone)."""
    out = tmp_path_factory.mktemp("dpc") / "stage1"
    build(data_root, tiny_clip_path, tiny_opts, out, trainer="CoOp", config=STAGE1_CONFIG).train()
    return str(out)


@pytest.fixture
def make_dpc(data_root, tiny_clip_path, tiny_opts, stage1, tmp_path):
    def make(*opts, subsample="base"):
        return build(data_root, tiny_clip_path, tiny_opts, tmp_path / "stage2", "TRAINER.DPC.BACKBONE_DIR", stage1,
                     *opts, subsample=subsample)
    return make


def stage1_ctx(stage1):
    return load_checkpoint(os.path.join(stage1, "prompt_learner", "model.pth.tar-1"))["state_dict"]["ctx"]


def perturb(trainer, scale=0.05):
    """Move θ away from P, as stage-2 training does."""
    with torch.no_grad():
        for name in trainer.prompt_names:
            param = trainer.model.get_parameter(name)
            param.add_(scale * torch.randn_like(param))


def test_parallel_prompt_starts_at_the_stage1_prompt(make_dpc, stage1):
    trainer = make_dpc()
    assert trainer.prompt_names == ["prompt_learner.ctx"]
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), stage1_ctx(stage1))
    assert torch.equal(trainer.pretuned["prompt_learner.ctx"], stage1_ctx(stage1))
    torch.testing.assert_close(trainer.parallel_prompts()["prompt_learner.ctx"].detach(), stage1_ctx(stage1))


def prompt_gradient(trainer, prompt, wrt, images):
    """d(loss)/d(wrt) for a fixed loss of the logits computed with `prompt` as the context."""
    with substituted_parameters(trainer.model, {"prompt_learner.ctx": prompt}):
        logits = trainer.model(images)
    return torch.autograd.grad(torch.logsumexp(logits, dim=1).sum() - logits[:, 0].sum(), wrt)[0]


def test_released_parameterization_scales_the_gradient_by_one_over_weight(make_dpc):
    trainer = make_dpc()
    perturb(trainer)
    theta = trainer.model.prompt_learner.ctx
    images = torch.randn(3, 3, 32, 32)
    q = trainer.parallel_prompts()["prompt_learner.ctx"]
    torch.testing.assert_close(q.detach(), theta.detach())  # Q = θ up to rounding
    prompt = q.detach().clone().requires_grad_()  # the prompt the encoders see
    grad_theta = prompt_gradient(trainer, q, theta, images)
    torch.testing.assert_close(grad_theta, prompt_gradient(trainer, prompt, prompt, images) / 0.2)


def test_frozen_p_parameterization_follows_its_formula(make_dpc, stage1):
    trainer = make_dpc("TRAINER.DPC.PARAMETERIZATION", "frozen_p", "TRAINER.DPC.WEIGHT_BASE", "0.5")
    perturb(trainer)
    theta, p = trainer.model.prompt_learner.ctx, stage1_ctx(stage1)
    images = torch.randn(3, 3, 32, 32)
    q = trainer.parallel_prompts()["prompt_learner.ctx"]
    expected = p + (theta.detach() - p) / 0.5
    torch.testing.assert_close(q.detach(), expected)
    prompt = q.detach().clone().requires_grad_()
    grad_theta = prompt_gradient(trainer, q, theta, images)
    torch.testing.assert_close(grad_theta, prompt_gradient(trainer, prompt, prompt, images) / 0.5)


def backbone_logits(data_root, tiny_clip_path, tiny_opts, stage1, tmp_path, images, subsample):
    backbone = build(data_root, tiny_clip_path, tiny_opts, tmp_path / "backbone", trainer="CoOp",
                     config=STAGE1_CONFIG, subsample=subsample)
    backbone.load_model(stage1, epoch=1)
    with torch.no_grad():
        return backbone.model(images)


def inference_logits(trainer, images):
    with torch.no_grad(), substituted_parameters(trainer.model, trainer.inference_prompts()):
        return trainer.model(images)


def test_new_classes_get_exactly_the_backbone_prompt(make_dpc, data_root, tiny_clip_path, tiny_opts, stage1,
                                                     tmp_path):
    images = torch.randn(4, 3, 32, 32)
    trainer = make_dpc(subsample="new")
    perturb(trainer)
    expected = backbone_logits(data_root, tiny_clip_path, tiny_opts, stage1, tmp_path, images, "new")
    assert torch.equal(inference_logits(trainer, images), expected)

    mixed_new = make_dpc("TRAINER.DPC.WEIGHT_NEW", "0.5", subsample="new")
    perturb(mixed_new)
    theta = mixed_new.model.prompt_learner.ctx.detach()
    torch.testing.assert_close(mixed_new.inference_prompts()["prompt_learner.ctx"],
                               0.5 * theta + 0.5 * stage1_ctx(stage1))


def test_base_prompt_is_the_trained_tensor_or_the_mixed_one(make_dpc, stage1):
    trained = make_dpc()
    perturb(trained)
    theta = trained.model.prompt_learner.ctx
    assert torch.equal(trained.inference_prompts()["prompt_learner.ctx"], theta.detach())

    mixed = make_dpc("TRAINER.DPC.BASE_PROMPT", "mixed")
    perturb(mixed)
    theta = mixed.model.prompt_learner.ctx.detach()
    torch.testing.assert_close(mixed.inference_prompts()["prompt_learner.ctx"],
                               0.2 * theta + 0.8 * stage1_ctx(stage1))


def with_dataset_name(trainer, name):
    cfg = trainer.cfg.clone()
    cfg.defrost()
    cfg.DATASET.NAME = name
    trainer.cfg = cfg
    return trainer


def test_all_classes_prompt_follows_the_released_load_rule_or_the_source(make_dpc, stage1, tmp_path):
    """SUBSAMPLE all (few-shot, cross-dataset): θ for the model in memory (the end-of-training test);
    after loading a checkpoint, θ only on "ImageNet" (reference) or only on the training dataset
    (by_source), else the new-class rule, which is P at ω_n = 0."""
    trained = make_dpc(subsample="all")
    perturb(trained)
    theta, p = trained.model.prompt_learner.ctx.detach().clone(), stage1_ctx(stage1)
    prompt = lambda trainer: trainer.inference_prompts()["prompt_learner.ctx"]  # noqa: E731
    run = tmp_path / "stage2_run"  # θ, saved as a stage-2 run on Caltech101 saves it
    trained.output_dir = str(run)
    trained._save_model(0)
    (run / "config.yaml").write_text(trained.cfg.dump())
    assert torch.equal(prompt(trained), theta)
    assert torch.equal(prompt(with_dataset_name(trained, "ImageNet")), theta)

    for mode, evaluated_on, expected in (("reference", "Caltech101", p), ("reference", "ImageNet", theta),
                                         ("by_source", "Caltech101", theta), ("by_source", "ImageNet", p)):
        evaluator = make_dpc("TRAINER.DPC.ALL_CLASSES_PROMPT", mode, subsample="all")
        evaluator.load_model(str(run), epoch=1)
        assert torch.equal(prompt(with_dataset_name(evaluator, evaluated_on)), expected), (mode, evaluated_on)

    os.remove(run / "config.yaml")  # e.g. a run of the official code
    with pytest.raises(FileNotFoundError, match="by_source needs the training run's config.yaml"):
        prompt(evaluator)
    with pytest.raises(ValueError, match="ALL_CLASSES_PROMPT must be one of reference, by_source"):
        make_dpc("TRAINER.DPC.ALL_CLASSES_PROMPT", "target")


def test_query_ranks_with_the_frozen_stage1_prompt(make_dpc, data_root, tiny_clip_path, tiny_opts, stage1, tmp_path):
    trainer = make_dpc()
    perturb(trainer)
    images = torch.randn(4, 3, 32, 32)
    logits = backbone_logits(data_root, tiny_clip_path, tiny_opts, stage1, tmp_path, images, "base")
    scale = trainer.model.logit_scale.exp()
    torch.testing.assert_close(trainer.query(images), (100 * logits / scale).softmax(dim=1))


def test_one_step_trains_only_the_prompt_on_the_enlarged_batch(make_dpc):
    trainer = make_dpc("TRAINER.DPC.WRITE_PIC_LIB", "")
    trainer.before_train()
    assert trainer.sampler.topk == 3  # TOPK 8 clamped to the 3 base classes
    batch = trainer._parse_batch_train(next(iter(trainer.train_loader_x)))
    random.seed(0)
    loss, logits = trainer.compute_loss(batch)
    loss.backward()
    assert logits is None and torch.isfinite(loss)
    grads = [name for name, p in trainer.model.named_parameters() if p.grad is not None]
    assert grads == ["prompt_learner.ctx"] and trainer.model.prompt_learner.ctx.grad.abs().sum() > 0


def test_loss_is_the_contrastive_loss_of_the_sampled_batch(make_dpc):
    trainer = make_dpc()
    trainer.before_train()
    batch = trainer._parse_batch_train(next(iter(trainer.train_loader_x)))
    random.seed(0)
    loss, _ = trainer.compute_loss(batch)
    random.seed(0)
    images, labels = trainer.sampler(batch.images, batch.labels, trainer.query(batch.images))
    with torch.no_grad():
        logits = trainer.model(images)  # Q = θ = P at step 0
    expected = contrastive_loss(logits[:, labels])
    torch.testing.assert_close(loss.detach(), expected)


def test_backbone_loss_option_adds_the_backbones_own_loss(make_dpc):
    plain, added = make_dpc(), make_dpc("TRAINER.DPC.ADD_BACKBONE_LOSS", "True")
    plain.before_train()
    added.before_train()
    batch = plain._parse_batch_train(next(iter(plain.train_loader_x)))
    random.seed(0)
    contrastive, _ = plain.compute_loss(batch)
    random.seed(0)
    total, _ = added.compute_loss(batch)
    with torch.no_grad():
        cross_entropy = F.cross_entropy(plain.model(batch.images), batch.labels)  # CoOp's loss at θ = P
    torch.testing.assert_close(total.detach(), contrastive.detach() + cross_entropy)


def test_picture_library_from_the_fixture(make_dpc, tmp_path):
    trainer = make_dpc("TRAINER.DPC.WRITE_PIC_LIB", str(tmp_path / "lib"))
    trainer.before_train()
    data = json.loads((tmp_path / "lib" / "SPLE_Caltech101.json").read_text())
    assert set(data) == {"train", "val", "train_obj_list", "val_obj_list"} and len(data["train"]) == 1
    train = data["train"][0]
    assert list(train) == data["train_obj_list"] == ["face", "leopard", "motorbike", "accordion", "airplane"]
    image_root = trainer.dm.dataset.image_root
    for label, name in enumerate(train):
        assert train[name][0] == label and len(train[name][1]) == 4  # the full train split, file order
        assert all(os.path.isfile(os.path.join(image_root, p)) for p in train[name][1])
    assert [len(paths) for paths in trainer.sampler.paths] == [4, 4, 4]

    fewshot = make_dpc("TRAINER.DPC.LIBRARY_SOURCE", "fewshot")
    fewshot.before_train()
    assert [len(paths) for paths in fewshot.sampler.paths] == [2, 2, 2]

    official = make_dpc("TRAINER.DPC.PIC_LIB", str(tmp_path / "lib" / "SPLE_Caltech101.json"))
    official.before_train()
    assert official.sampler.paths == trainer.sampler.paths


def test_missing_or_mismatched_stage1_is_a_clear_error(make_dpc, data_root, tiny_clip_path, tiny_opts, stage1,
                                                       tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Stage-1 checkpoint not found.*tar-7.*epochs present: \[1\]"):
        make_dpc("TRAINER.DPC.BACKBONE_EPOCH", "7")
    with pytest.raises(FileNotFoundError, match="BACKBONE_DIR"):
        build(data_root, tiny_clip_path, tiny_opts, tmp_path / "x", "TRAINER.DPC.BACKBONE_DIR", str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"shape \(4, 128\), this model \(2, 128\).*N_CTX"):
        make_dpc("TRAINER.COOP.N_CTX", "2")


def test_stage1_trained_with_another_clip_is_refused(stage1, data_root, tiny_opts, tmp_path):
    """Same shapes, other weights: the stage-1 checkpoint records its backbone's SHA-256."""
    other_clip = make_tiny_clip(tmp_path / "other_clip.pt", seed=1)
    with pytest.raises(CheckpointError, match=r"model.pth.tar-1 was trained with the backbone .*tiny_clip.pt.*"
                                              r"this run uses .*other_clip.pt"):
        build(data_root, other_clip, tiny_opts, tmp_path / "stage2", "TRAINER.DPC.BACKBONE_DIR", stage1)


# ---- one file: every DPC trainer in trainers/dpc.py, no backbone depends on it ----

def test_every_in_tree_dpc_trainer_lives_in_dpc_py():
    in_tree = {name: cls for name in TRAINERS.names()
               if issubclass(cls := TRAINERS.get(name), DPCMixin) and cls.__module__.startswith("trainers.")}
    assert {"DPC_CoOp", "DPC_DPL", "DPC_DGPrompt", "DPC_PromptKD"} <= set(in_tree)
    assert {cls.__module__ for cls in in_tree.values()} == {"trainers.dpc"}


def test_backbone_files_do_not_import_dpc():
    """In a fresh interpreter, every other trainer module imports without `trainers.dpc` (the package's
    `__init__`, which imports them all, is bypassed)."""
    folder = os.path.dirname(trainers.__file__)
    backbones = sorted(name[:-3] for name in os.listdir(folder)
                       if name.endswith(".py") and name not in ("__init__.py", "dpc.py"))
    assert {"dpl", "dgprompt", "coop", "promptkd"} <= set(backbones)
    code = ("import sys, types\n"
            f"package = types.ModuleType('trainers'); package.__path__ = [{folder!r}]\n"
            "sys.modules['trainers'] = package\n"
            f"for name in {backbones!r}: __import__('trainers.' + name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('trainers.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(folder), capture_output=True, text=True,
                         check=True).stdout
    assert "'trainers.dpl'" in out and "'trainers.dgprompt'" in out
    assert "trainers.dpc" not in out
