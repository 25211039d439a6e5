"""PromptKD: the loss by hand, cached teacher features, gradients, the data protocol, best_val selection,
official whole-student files, teacher checkpoint errors and warnings; DPC_PromptKD's structure, its
new-class equality with PromptKD and its base-class gain."""
import json
import math
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config import setup_cfg
from engine.trainer import Batch, build_trainer, set_random_seed
from tests.helpers.official import make_official_style_checkpoint
from train import build_parser
from trainers.promptkd import load_teacher
from trainers.prompting import normalize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "trainers")
KD_CONFIG = os.path.join(CONFIGS, "PromptKD", "vit_b16_c2_ep20_batch8_4+4ctx.yaml")
DPC_CONFIG = os.path.join(CONFIGS, "DPC", "PromptKD", "vit_b16_c2_ep20_batch4_4+4ctx.yaml")
STUDENT_TRAINABLE = ["VPT_image_trans.conv1.0.bias", "VPT_image_trans.conv1.0.weight", "VPT_image_trans.conv1.1.bias",
                     "VPT_image_trans.conv1.1.weight", "VPT_image_trans.conv1.3.bias", "VPT_image_trans.conv1.3.weight",
                     "image_encoder.VPT", "image_encoder.transformer.resblocks.1.VPT_shallow",
                     "image_encoder.transformer.resblocks.2.VPT_shallow"]
BN_BUFFERS = ["VPT_image_trans.conv1.1.num_batches_tracked", "VPT_image_trans.conv1.1.running_mean",
              "VPT_image_trans.conv1.1.running_var"]


@pytest.fixture(scope="module")
def build(data_root, promptkd_clips, promptkd_teacher, tiny_opts):
    def make(output_dir, *opts, trainer="PromptKD", config=KD_CONFIG, subsample="base", shots="0"):
        args = build_parser().parse_args([
            "--root", data_root, "--seed", "1", "--trainer", trainer, "--backbone", promptkd_clips[0],
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "caltech101.yaml"),
            "--config-file", config, "--output-dir", str(output_dir), *tiny_opts, "DATASET.NUM_SHOTS", shots,
            "DATASET.SUBSAMPLE_CLASSES", subsample, "OPTIM.MAX_EPOCH", "2", "TRAINER.PROMPTKD.KD_WEIGHT", "1000.0",
            "TRAINER.PROMPTKD.TEACHER_NAME", promptkd_clips[1], "TRAINER.PROMPTKD.TEACHER_CKPT", promptkd_teacher,
            *opts])
        cfg = setup_cfg(args)
        set_random_seed(cfg.SEED)
        return build_trainer(cfg)
    return make


@pytest.fixture(scope="module")
def kd_run(build, tmp_path_factory):
    """A finished 2-epoch PromptKD run (best_val, as the paper config)."""
    out = tmp_path_factory.mktemp("promptkd") / "run"
    build(out).train()
    return str(out)


def a_batch(trainer):
    batch = next(iter(trainer.train_loader_x))
    return Batch(batch["img"], batch["label"], batch["impath"])


def test_loss_gradients_and_cached_teacher_features(build, tmp_path):
    trainer = build(tmp_path, "TRAINER.PROMPTKD.TEMPERATURE", "2.0")
    assert sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad) == STUDENT_TRAINABLE
    batch = a_batch(trainer)
    loss, _ = trainer.compute_loss(batch)
    model, teacher = trainer.model, trainer.model.teacher
    with torch.no_grad():
        t = normalize(teacher.encode_text())
        teacher_logits = teacher.logit_scale.exp() * normalize(teacher.encode_image(batch.images)) @ t.t()
        student_logits = model.logit_scale.exp() * normalize(model.encode_image(batch.images)) @ t.t()
        p, q = (teacher_logits / 2).softmax(dim=1), (student_logits / 2).softmax(dim=1)
        expected = 1000 * 2 ** 2 * (p * (p.log() - q.log())).sum() / p.numel()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    assert p.shape == (4, 5)  # every class of the fixture: unlabelled all-class training

    cached = trainer.teacher_text_features()
    loss.backward()
    with_grad = sorted(n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)
    assert with_grad == STUDENT_TRAINABLE
    trainer.optim.step()
    assert trainer.teacher_text_features() is cached  # computed once per class list
    with torch.no_grad():
        torch.testing.assert_close(cached, normalize(teacher.encode_text()), rtol=0, atol=0)


def test_data_protocol_trains_on_every_class_and_tests_each_half(build, tmp_path):
    dataset = build(tmp_path / "b2n").dm.dataset  # SUBSAMPLE base is ignored for training, as the reference
    assert dataset.classnames == ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert len(dataset.train_x) == 20 and sorted({d.label for d in dataset.train_x}) == [0, 1, 2, 3, 4]
    assert [(d.classname, d.label) for d in dataset.val][::2] == [("face", 0), ("leopard", 1), ("motorbike", 2)]
    assert [(d.classname, d.label) for d in dataset.test][::2] == [("accordion", 0), ("airplane", 1)]
    cross = build(tmp_path / "xd", "TRAINER.MODAL", "cross", subsample="all").dm.dataset
    assert len(cross.train_x) == 20 and cross.val == cross.test and len(cross.test) == 10
    with pytest.raises(ValueError, match="TRAINER.MODAL must be one of base2novel, cross"):
        build(tmp_path / "bad", "TRAINER.MODAL", "novel")


def test_best_val_selects_on_the_base_test_set_and_says_so(kd_run, build, tmp_path):
    results = json.load(open(os.path.join(kd_run, "results.json")))
    best = load_checkpoint(os.path.join(kd_run, "VLPromptLearner", "model-best.pth.tar"))
    assert (results["split"], results["num_classes"], results["total"]) == ("val", 5, 6)
    assert results["selected_on_test"] is True and results["selected_epoch"] == best["epoch"]
    assert results["accuracy"] == pytest.approx(best["val_result"], abs=1e-3)
    assert sorted(best["state_dict"]) == sorted(STUDENT_TRAINABLE + BN_BUFFERS)  # BN statistics change the output
    honest = tmp_path / "last"
    build(honest, "TEST.FINAL_MODEL", "last_step", "OPTIM.MAX_EPOCH", "1").train()
    record = json.load(open(honest / "results.json"))
    assert record["epoch"] == 1 and "selected_on_test" not in record


def evaluated_logits(trainer):
    """(logits the final evaluation scored, accuracy)."""
    seen, process = [], trainer.evaluator.process
    trainer.evaluator.process = lambda logits, labels: (seen.append(logits.detach().clone()), process(logits, labels))
    accuracy = trainer.test()
    return torch.cat(seen), accuracy


def test_official_whole_student_file_evaluates_the_same(kd_run, build, tmp_path):
    ours = build(tmp_path / "ours", subsample="new")
    ours.load_model(kd_run)
    state = {k: v.half() if k.startswith("VPT_image_trans") and "conv1.1" not in k else v
             for k, v in ours.model.state_dict().items() if not k.startswith("teacher.")}  # fp16 convs, as official
    official_dir = tmp_path / "official"
    os.makedirs(official_dir / "VLPromptLearner")
    make_official_style_checkpoint(str(official_dir / "VLPromptLearner" / "model.pth.tar-2"), state, 2)
    theirs = build(tmp_path / "theirs", subsample="new")
    theirs.load_model(str(official_dir), epoch=2)
    (ours_logits, ours_acc), (their_logits, their_acc) = evaluated_logits(ours), evaluated_logits(theirs)
    torch.testing.assert_close(their_logits, ours_logits, rtol=1e-3, atol=1e-3)  # fp16-rounded convolutions
    assert their_acc == ours_acc and their_logits.shape == (4, 2)


def test_missing_teacher_names_the_file_the_release_and_the_recipe(build, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "TRAINER.PROMPTKD.TEACHER_CKPT", "", "TRAINER.PROMPTKD.TEACHER_ROOT", str(tmp_path / "tm"))
    message = str(err.value)
    assert os.path.join(str(tmp_path / "tm"), "Caltech101", "VLPromptLearner", "model-best.pth.tar") in message
    assert "PromptKD repository's teacher_model release" in message
    assert "PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml" in message


def test_teacher_file_with_missing_prompts_warns_and_zero_shot_keys_are_ignored(build, promptkd_teacher, tmp_path,
                                                                                capsys):
    trainer = build(tmp_path / "ref")
    state = load_checkpoint(os.path.join(promptkd_teacher, "VLPromptLearner", "model.pth.tar-1"))["state_dict"]

    def teacher_from(name, state_dict, clip_name=None):
        torch.save({"state_dict": state_dict, "epoch": 1}, tmp_path / name)
        cfg = trainer.cfg.clone()
        cfg.defrost()
        cfg.TRAINER.PROMPTKD.TEACHER_CKPT = str(tmp_path / name)
        cfg.TRAINER.PROMPTKD.TEACHER_NAME = clip_name or cfg.TRAINER.PROMPTKD.TEACHER_NAME
        return load_teacher(cfg, trainer.classnames, trainer.precision)

    with_zs = {**state, "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(3),
               "prompt_learner.ZS_image_encoder.proj": torch.zeros(2)}
    with torch.no_grad():
        torch.testing.assert_close(teacher_from("zs.pth.tar", with_zs).encode_text(),
                                   trainer.model.teacher.encode_text())
    capsys.readouterr()
    teacher_from("shallow.pth.tar", {k: v for k, v in state.items()
                                     if k != "text_encoder.transformer.resblocks.1.VPT_shallow"})
    out = capsys.readouterr().out
    assert "Warning: the teacher checkpoint" in out and "text_encoder.transformer.resblocks.1.VPT_shallow" in out
    with pytest.raises(RuntimeError, match="(?s)does not fit the teacher CLIP .*set TRAINER.PROMPTKD.TEACHER_NAME"):
        teacher_from("other_clip.pth.tar", state, clip_name=trainer.cfg.MODEL.BACKBONE.NAME)  # the student's widths


def test_bf16_trains_a_step(build, tmp_path):
    trainer = build(tmp_path, "TRAINER.PROMPTKD.PREC", "bf16")
    with trainer.precision.autocast():
        loss, _ = trainer.compute_loss(a_batch(trainer))
    loss.backward()
    assert math.isfinite(loss.item()) and trainer.model.VPT_image_trans.conv1[0].weight.grad is not None


# ---- DPC on PromptKD ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def make_dpc(build, kd_run):
    def make(output_dir, *opts, subsample="base", shots="2"):
        return build(output_dir, "TRAINER.DPC.BACKBONE_DIR", kd_run, *opts, trainer="DPC_PromptKD", config=DPC_CONFIG,
                     subsample=subsample, shots=shots)
    return make


def test_dpc_structure_starts_from_the_teacher_and_the_stage1_student(make_dpc, kd_run, promptkd_teacher, tmp_path):
    stage1 = load_checkpoint(os.path.join(kd_run, "VLPromptLearner", "model-best.pth.tar"))["state_dict"]
    teacher = load_checkpoint(os.path.join(promptkd_teacher, "VLPromptLearner", "model.pth.tar-1"))["state_dict"]
    dpc = make_dpc(tmp_path / "bug")
    text_deep = ["teacher.text_encoder.transformer.resblocks.1.VPT_shallow",
                 "teacher.text_encoder.transformer.resblocks.2.VPT_shallow"]
    assert dpc.prompt_names == sorted(STUDENT_TRAINABLE[6:] + ["teacher.prompt_learner.ctx"] + text_deep,
                                      key=[n for n, _ in dpc.model.named_parameters()].index)
    param = dpc.model.get_parameter
    assert torch.equal(param("teacher.prompt_learner.ctx"), teacher["prompt_learner.ctx"])
    assert torch.equal(param("image_encoder.VPT"), stage1["image_encoder.VPT"])
    assert torch.equal(dpc.model.VPT_image_trans.conv1[1].running_mean, stage1[BN_BUFFERS[1]])
    # Reference behaviour: the deep prompts start from fresh values, P keeps the backbone's.
    assert not torch.equal(param(text_deep[0]), teacher[text_deep[0][len("teacher."):]])
    assert torch.equal(dpc.pretuned[text_deep[0]], teacher[text_deep[0][len("teacher."):]])
    assert not torch.equal(param("image_encoder.transformer.resblocks.1.VPT_shallow"), stage1[STUDENT_TRAINABLE[7]])
    cloned = make_dpc(tmp_path / "clone", "TRAINER.DPC.CLONE_DEEP_PROMPTS", "True")
    assert all(torch.equal(cloned.model.get_parameter(n), cloned.pretuned[n]) for n in cloned.prompt_names)


def test_dpc_new_classes_are_exactly_promptkd_and_base_rises(make_dpc, build, kd_run, tmp_path):
    # A high learning rate: the tiny random student barely tells the fixture's colours apart.
    opts = ("OPTIM.MAX_EPOCH", "5", "OPTIM.LR", "1.0", "TEST.FINAL_MODEL", "last_step")
    dpc = make_dpc(tmp_path / "stage2", *opts, subsample="base", shots="4")
    dpc.train()
    base_dpc = json.load(open(tmp_path / "stage2" / "results.json"))
    base_kd = json.load(open(os.path.join(kd_run, "results.json")))
    assert base_kd["accuracy"] < 100 and base_dpc["accuracy"] > base_kd["accuracy"]

    new_dpc = make_dpc(tmp_path / "new", *opts, subsample="new")
    new_dpc.load_model(str(tmp_path / "stage2"))
    new_kd = build(tmp_path / "kd_new", subsample="new")
    new_kd.load_model(kd_run)
    (dpc_logits, dpc_acc), (kd_logits, kd_acc) = evaluated_logits(new_dpc), evaluated_logits(new_kd)
    # the same tensors through other code paths: equal to float rounding (logits are scaled by 100)
    torch.testing.assert_close(dpc_logits, kd_logits, rtol=1e-5, atol=1e-4)
    assert dpc_acc == kd_acc


def test_dpc_weights_only_the_text_context_and_its_fallback_reaches_the_last_class(make_dpc, tmp_path):
    import random

    from trainers.dpc import negatives_for_anchor

    dpc = make_dpc(tmp_path)
    prompts = dpc.parallel_prompts()
    for name, q in prompts.items():  # the converse Q of the context carries θ's gradient × 1/ω_b; the rest is θ
        assert (q is dpc.model.get_parameter(name)) == (name != "teacher.prompt_learner.ctx")
    q = prompts["teacher.prompt_learner.ctx"]
    (grad,) = torch.autograd.grad(q.sum(), dpc.model.get_parameter("teacher.prompt_learner.ctx"))
    torch.testing.assert_close(grad, torch.full_like(grad, 1 / 0.2))
    random.seed(0)
    drawn = {c for _ in range(200) for c in negatives_for_anchor([0], 0, [0], 5, fallback_skips_last=False)}
    assert drawn == {1, 2, 3, 4}  # the released PromptKD variant: randint(1, C - 1)
