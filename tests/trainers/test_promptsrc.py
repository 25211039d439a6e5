"""PromptSRC: the frozen zero-shot references, the four loss terms by hand, Gaussian prompt
aggregation (weights, fold, both modes, resume), checkpoints (ours and official whole-model files)
and DPC_PromptSRC's new-class evaluation on the same frozen weights."""
import os

import pytest
import torch

import trainers  # noqa: F401
from engine.checkpoint import load_checkpoint
from engine.clip_loading import load_clip_to_cpu
from engine.config import setup_cfg
from engine.trainer import build_trainer, set_random_seed
from tests.helpers.cli import REPO, read_results, run_train
from tests.helpers.interrupt import killed_in_epoch
from tests.helpers.official import make_official_style_checkpoint
from train import build_parser
from trainers.dpc import substituted_parameters
from trainers.ivlp import is_ivlp_trainable
from trainers.prompting import tokenize
from trainers.promptsrc import GPA_KEY, ZERO_SHOT_TOWER, fold_constant, gaussian_weights
from trainers.templates import IMAGENET_TEMPLATES, PROMPTSRC_TEMPLATES

CONFIG = "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
DPC_CONFIG = "DPC/PromptSRC/vit_b16_ep20.yaml"
GPA_OPTS = ("OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2")


def build(data_root, tiny_clip_path, tiny_opts, output_dir, *opts, trainer="PromptSRC", config=CONFIG,
          subsample="base"):
    """A trainer as train.py builds it (seed 1, 2 shots)."""
    args = build_parser().parse_args([
        "--root", data_root, "--seed", "1", "--trainer", trainer, "--backbone", tiny_clip_path,
        "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "caltech101.yaml"),
        "--config-file", os.path.join(REPO, "configs", "trainers", config), "--output-dir", str(output_dir),
        *tiny_opts, "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", subsample, *opts])
    cfg = setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def clone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def gpa_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """A finished 3-epoch PromptSRC run on the base classes (GPA mean 2, std 1), the model state
    before the run and after each epoch's last step (when GPA takes it)."""
    out = tmp_path_factory.mktemp("promptsrc") / "run"
    trainer = build(data_root, tiny_clip_path, tiny_opts, out, *GPA_OPTS)
    before = clone_state(trainer.model)
    states = []
    aggregate = trainer.aggregate_epoch

    def record_then_aggregate():
        states.append(clone_state(trainer.model))
        aggregate()

    trainer.aggregate_epoch = record_then_aggregate
    trainer.train()
    return trainer, before, states, str(out)


def test_template_list_puts_a_photo_of_a_first_and_keeps_60():
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}." and len(PROMPTSRC_TEMPLATES) == 60
    others = [t for t in IMAGENET_TEMPLATES if t != "a photo of a {}."]
    assert PROMPTSRC_TEMPLATES[1:] == others[:59]


def test_zero_shot_references_and_the_four_loss_terms_by_hand(data_root, tiny_clip_path, tiny_opts, tmp_path):
    trainer = build(data_root, tiny_clip_path, tiny_opts, tmp_path)
    assert trainer.model.fixed_embeddings is None  # built at the first step only (never in --eval-only)
    batch = trainer._parse_batch_train(next(iter(trainer.train_loader_x)))
    loss, logits = trainer.compute_loss(batch)
    assert logits is None

    reference = load_clip_to_cpu(tiny_clip_path).float()  # a separate plain CLIP, as the reference builds
    model, images, labels = trainer.model, batch.images, batch.labels
    with torch.no_grad():
        names = [name.replace("_", " ") for name in trainer.classnames]
        texts = [t.format(n) for t in PROMPTSRC_TEMPLATES for n in names]
        per_template = reference.encode_text(tokenize(texts)).view(len(PROMPTSRC_TEMPLATES), len(names), -1)
        fixed = per_template.mean(dim=0)  # plain mean of un-normalised features
        torch.testing.assert_close(trainer.model.fixed_embeddings, fixed, rtol=1e-5, atol=1e-5)
        # the zero-shot image tower is CLIP's own tower, run without the prompts it carries
        assert torch.equal(model.zero_shot_image_features(images), reference.encode_image(images))

        g = fixed / fixed.norm(dim=-1, keepdim=True)
        f0 = reference.encode_image(images)
        f0 = f0 / f0.norm(dim=-1, keepdim=True)
        t = model.encode_text()
        t = t / t.norm(dim=-1, keepdim=True)
        f = model.encode_image(images)
        f = f / f.norm(dim=-1, keepdim=True)
        z, z0 = 100 * f @ t.t(), 100 * f0 @ g.t()
        ce = -z.log_softmax(dim=1)[torch.arange(len(labels)), labels].mean()
        text_l1 = 25 * (t - g).abs().mean()
        image_l1 = 10 * (f - f0).abs().mean()
        p, p0 = z.softmax(dim=1), z0.softmax(dim=1)
        kl = (p0 * (p0.log() - p.log())).sum() / z.numel()  # KL(zero-shot || prompted)
    assert loss.item() == pytest.approx((ce + kl + text_l1 + image_l1).item(), rel=1e-5)
    reverse_kl = (p * (p.log() - p0.log())).sum() / z.numel()
    assert abs(kl - reverse_kl) > 1e-4  # the direction is pinned

    loss.backward()
    with_grad = sorted(n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)
    assert with_grad == sorted(n for n, _ in model.named_parameters() if is_ivlp_trainable(n))
    assert len(with_grad) == 6  # ctx, VPT, and blocks 1-2 of each 3-layer tower


def test_bf16_trains(data_root, tiny_clip_path, tiny_opts, tmp_path):
    """The reference trains only in fp16; here the zero-shot parts follow the model's precision."""
    trainer = build(data_root, tiny_clip_path, tiny_opts, tmp_path, "TRAINER.PROMPTSRC.PREC", "bf16")
    batch = trainer._parse_batch_train(next(iter(trainer.train_loader_x)))
    with trainer.precision.autocast():
        loss, _ = trainer.compute_loss(batch)
    loss.backward()
    assert trainer.precision.name == "bf16" and torch.isfinite(loss)
    assert trainer.model.prompt_learner.ctx.grad.abs().sum() > 0


def test_gaussian_weights():
    assert gaussian_weights(2, 1, 3) == pytest.approx([0.2741, 0.4519, 0.2741], abs=1e-4)
    base_to_new = gaussian_weights(15, 1, 20)
    assert sum(base_to_new) == pytest.approx(1.0)
    assert base_to_new[14] == pytest.approx(0.3989, abs=1e-4) and base_to_new[19] < 1e-4


def test_fold_of_a_constant_fp16_tensor_rounds_like_the_reference():
    torch.manual_seed(0)
    t = torch.randn(4096).half()
    w = gaussian_weights(2, 1, 3)
    expected = (t * w[0] + t * w[1]) + t * w[2]  # left to right, in fp16
    folded = fold_constant(t, w)
    assert folded.dtype == torch.float16 and torch.equal(folded, expected)
    differ = folded != t
    assert differ.any() and (folded - t)[differ].abs().le(t[differ].abs() * 2 ** -10).all()  # 1-ulp changes


def test_gpa_folds_the_whole_state_by_default(gpa_run):
    trainer, before, states, out = gpa_run
    w = gaussian_weights(2, 1, 3)
    final = trainer.model.state_dict()
    assert len(states) == 3
    for key, value in final.items():
        expected = (states[0][key] * w[0] + states[1][key] * w[1]) + states[2][key] * w[2]
        assert torch.equal(value, expected), key
    ctx = "prompt_learner.ctx"
    assert not torch.equal(final[ctx], states[2][ctx])
    frozen = [k for k in final if not is_ivlp_trainable(k)]
    assert any(not torch.equal(final[k], before[k]) for k in frozen)  # the frozen weights were rounded

    # the shared zero-shot tower equals a separate CLIP tower folded alike (the reference's third copy)
    separate = load_clip_to_cpu(trainer.cfg.MODEL.BACKBONE.NAME).float().visual
    with torch.no_grad():
        for param in separate.parameters():
            param.copy_(fold_constant(param.clone(), w))
        images = torch.randn(2, 3, 32, 32)
        assert torch.equal(trainer.model.zero_shot_image_features(images), separate(images))

    saved = load_checkpoint(os.path.join(out, "VLPromptLearner", "model.pth.tar-3"))["state_dict"]
    assert sorted(saved) == sorted([*(k for k in final if is_ivlp_trainable(k)), GPA_KEY])
    assert torch.equal(saved[ctx], final[ctx])
    assert saved[GPA_KEY].tolist() == [2.0, 1.0, 3.0, 0.0]


def test_gpa_trainable_only_leaves_the_frozen_clip(data_root, tiny_clip_path, tiny_opts, tmp_path):
    trainer = build(data_root, tiny_clip_path, tiny_opts, tmp_path, *GPA_OPTS,
                    "TRAINER.PROMPTSRC.GPA_TRAINABLE_ONLY", "True", "TEST.NO_TEST", "True")
    before = clone_state(trainer.model)
    states = []
    aggregate = trainer.aggregate_epoch
    trainer.aggregate_epoch = lambda: (states.append(clone_state(trainer.model)), aggregate())
    trainer.train()
    w = gaussian_weights(2, 1, 3)
    for key, value in trainer.model.state_dict().items():
        if is_ivlp_trainable(key):
            assert torch.equal(value, (states[0][key] * w[0] + states[1][key] * w[1]) + states[2][key] * w[2])
        else:
            assert torch.equal(value, before[key]), key


def test_gpa_mean_outside_the_epochs_warns(data_root, tiny_clip_path, tiny_opts, tmp_path, capsys):
    build(data_root, tiny_clip_path, tiny_opts, tmp_path, "OPTIM.MAX_EPOCH", "3")  # GPA_MEAN 15
    assert "GPA_MEAN 15 lies outside the epochs 1..3" in capsys.readouterr().out


def test_interrupted_run_still_ends_aggregated(gpa_run, data_root, tiny_clip_path, tiny_opts, tmp_path, monkeypatch,
                                               capsys):
    out = tmp_path / "interrupted"
    with killed_in_epoch(monkeypatch, 2):
        build(data_root, tiny_clip_path, tiny_opts, out, *GPA_OPTS).train()
    capsys.readouterr()
    resumed = build(data_root, tiny_clip_path, tiny_opts, out, *GPA_OPTS)
    resumed.train()
    log = capsys.readouterr().out
    assert "Restored the GPA accumulator (2 epochs)" in log and "Using GPA model for final inference..." in log
    full = gpa_run[0].model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, full[key]), key


def eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, name, model_dir, *opts, trainer="PromptSRC",
                 config=CONFIG):
    evaluator = build(data_root, tiny_clip_path, tiny_opts, tmp_path / name, *GPA_OPTS, *opts, trainer=trainer,
                      config=config, subsample="new")
    evaluator.load_model(model_dir, epoch=3)
    return evaluator


def test_our_checkpoint_reloads_the_aggregated_frozen_weights(gpa_run, data_root, tiny_clip_path, tiny_opts,
                                                              tmp_path):
    trainer, _, _, out = gpa_run
    evaluator = eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, "ours", out)
    trained = trainer.model.state_dict()
    for key, value in evaluator.model.state_dict().items():
        if "token_" not in key:  # rebuilt for the new classes
            assert torch.equal(value, trained[key]), key
    assert evaluator.model.fixed_embeddings is None


def test_official_whole_model_checkpoint_evaluates_the_same(gpa_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """A whole CustomCLIP state dict, its separate zero-shot tower included, in Dassl's file layout."""
    trainer, _, _, out = gpa_run
    whole = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    whole.update({ZERO_SHOT_TOWER + k[len("image_encoder."):]: v.clone() for k, v in trainer.model.state_dict().items()
                  if k.startswith("image_encoder.") and "VPT" not in k})
    official = tmp_path / "official"
    os.makedirs(official / "VLPromptLearner")
    make_official_style_checkpoint(official / "VLPromptLearner" / "model.pth.tar-3", whole, 3)

    ours = eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, "ours", out)
    theirs = eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, "theirs", str(official))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.model(images), theirs.model(images))
    for name, model_dir in (("ours_cli", out), ("official_cli", str(official))):
        run_train(data_root, tiny_clip_path, tiny_opts, "PromptSRC", CONFIG, tmp_path / name, "--eval-only",
                  "--model-dir", model_dir, "--load-epoch", "3", opts=[*GPA_OPTS, "DATASET.SUBSAMPLE_CLASSES", "new"])
    a, b = read_results(tmp_path / "ours_cli"), read_results(tmp_path / "official_cli")
    assert (a["correct"], a["macro_f1"]) == (b["correct"], b["macro_f1"])

    # the file's frozen tensors are used as they are, as the official loader does
    whole["image_encoder.ln_post.weight"] = whole["image_encoder.ln_post.weight"] * 2
    make_official_style_checkpoint(official / "VLPromptLearner" / "model.pth.tar-3", whole, 3)
    altered = eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, "altered", str(official))
    assert torch.equal(altered.model.image_encoder.ln_post.weight, whole["image_encoder.ln_post.weight"])


def test_dpc_new_classes_match_promptsrc_exactly(gpa_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """ω_new = 0: P and the frozen CLIP as stage 1's aggregation left it, whatever θ has become."""
    _, before, _, out = gpa_run
    backbone = eval_trainer(data_root, tiny_clip_path, tiny_opts, tmp_path, "backbone", out)
    dpc = build(data_root, tiny_clip_path, tiny_opts, tmp_path / "dpc", *GPA_OPTS, "TRAINER.DPC.BACKBONE_DIR", out,
                trainer="DPC_PromptSRC", config=DPC_CONFIG, subsample="new")
    assert len(dpc.prompt_names) == 6 and not dpc.aggregates_epochs
    with torch.no_grad():
        for name in dpc.prompt_names:
            param = dpc.model.get_parameter(name)
            param.add_(0.05 * torch.randn_like(param))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.model(images)
        dpc.model.eval()
        with substituted_parameters(dpc.model, dpc.inference_prompts()):
            assert torch.equal(dpc.model(images), expected)
    frozen = [k for k in before if not is_ivlp_trainable(k) and "token_" not in k]
    assert any(not torch.equal(dpc.model.state_dict()[k], before[k]) for k in frozen)  # the aggregated CLIP
