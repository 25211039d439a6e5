"""MaPLe and KgCoOp end to end through `train.main` on a synthetic Caltech101; their configs."""
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.clip_loading import load_clip_to_cpu
from engine.config import build_cfg, merge_from_file
from engine.errors import CheckpointError
from tests.helpers.cli import REPO, read_results, run_train, train_once
from tests.helpers.official import make_official_style_checkpoint
from trainers.maple import MaPLeModel

CONFIGS = os.path.join(REPO, "configs", "trainers")
MAPLE = ("MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ["TRAINER.MAPLE.PROMPT_DEPTH", "3"])
KGCOOP = ("KgCoOp", "KgCoOp/vit_b16_ep100_ctxv1.yaml", [])


def run(method, data_root, tiny_clip_path, tiny_opts, output_dir, *flags, opts=()):
    """train.py with the tiny CLIP: 2 shots, 2 epochs, base classes unless `opts` say otherwise."""
    trainer, config, method_opts = method
    defaults = ["OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base"]
    return run_train(data_root, tiny_clip_path, tiny_opts, trainer, config, output_dir, *flags,
                     opts=[*defaults, *method_opts, *opts])


def evaluate(method, data_root, tiny_clip_path, tiny_opts, output_dir, model_dir, subsample="base"):
    run(method, data_root, tiny_clip_path, tiny_opts, output_dir, "--eval-only", "--model-dir", str(model_dir),
        "--load-epoch", "2", opts=["DATASET.SUBSAMPLE_CLASSES", subsample])
    return read_results(output_dir)


def test_configs_carry_the_official_settings():
    def merged(name):
        cfg = build_cfg()
        merge_from_file(cfg, os.path.join(CONFIGS, name))
        return cfg

    kg = merged("KgCoOp/vit_b16_ep100_ctxv1.yaml")
    assert (kg.TRAINER.COOP.CTX_INIT, kg.TRAINER.COOP.W, kg.DATALOADER.TRAIN_X.BATCH_SIZE, kg.OPTIM.MAX_EPOCH) == \
        ("a photo of a", 8.0, 128, 100)  # the YAML's boolean `CTX_INIT: True`
    maple = merged("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml").TRAINER.MAPLE
    assert (maple.N_CTX, maple.CTX_INIT, maple.PROMPT_DEPTH) == (2, "a photo of a", 9)
    assert merged("MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml").TRAINER.MAPLE.PROMPT_DEPTH == 3
    assert merged("CoOp/vit_b16_ep50_ctxv1.yaml").TRAINER.COOP.CTX_INIT == "a photo of a"


# ---- MaPLe -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maple_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    return train_once(tmp_path_factory, "maple", lambda out: run(MAPLE, data_root, tiny_clip_path, tiny_opts, out))


def test_maple_trains_and_saves_only_the_prompt_learner(maple_run):
    checkpoint = load_checkpoint(str(maple_run / "MultiModalPromptLearner" / "model.pth.tar-2"))
    state = checkpoint["state_dict"]
    assert checkpoint["epoch"] == 2 and set(checkpoint) >= {"optimizer", "scheduler", "val_result"}
    assert sorted(state) == sorted([
        "prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix",
        "prompt_learner.proj.weight", "prompt_learner.proj.bias",
        *[f"prompt_learner.compound_prompts_text.{i}" for i in range(2)],
        *[f"prompt_learner.compound_prompt_projections.{i}.{p}" for i in range(2) for p in ("weight", "bias")]])
    log = (maple_run / "log.txt").read_text()
    assert "epoch [2/2]" in log and " acc " not in log  # the reference logs only the loss
    tail = log[log.index("Finish training"):]
    assert "=> result" in tail and "* accuracy:" in tail
    assert read_results(maple_run)["num_classes"] == 3


def test_maple_base_to_new(maple_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    results = evaluate(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "test_new", maple_run, "new")
    assert results["subsample"] == "new" and results["num_classes"] == 2 and results["epoch"] == 2
    assert "* accuracy:" in (tmp_path / "test_new" / "log.txt").read_text()


def official_maple_file(model_dir, tiny_clip_path, trained_state, edit=None):
    """The official layout: the whole CustomCLIP state dict (frozen CLIP, fp16 as the reference
    keeps it, plus the prompt learner), a pickled scheduler object and `val_result`."""
    cfg = build_cfg()
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 3
    whole = MaPLeModel(cfg, ["a", "b", "c"], load_clip_to_cpu(tiny_clip_path)).state_dict()
    assert not any(k.startswith("token_embedding") for k in whole)
    whole.update(trained_state)
    if edit:
        edit(whole)
    os.makedirs(model_dir / "MultiModalPromptLearner")
    make_official_style_checkpoint(model_dir / "MultiModalPromptLearner" / "model.pth.tar-2", whole, 2)


def test_official_whole_model_file_evaluates_like_ours(maple_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    trained = load_checkpoint(str(maple_run / "MultiModalPromptLearner" / "model.pth.tar-2"))["state_dict"]
    official_maple_file(tmp_path / "official", tiny_clip_path, trained)
    ours = evaluate(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "ours", maple_run)
    theirs = evaluate(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "theirs", tmp_path / "official")
    assert (theirs["correct"], theirs["macro_f1"]) == (ours["correct"], ours["macro_f1"])
    assert ours["correct"] == read_results(maple_run)["correct"]
    assert "Warning" not in (tmp_path / "theirs" / "log.txt").read_text()


def test_rerun_into_an_official_output_folder_retests(maple_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """The official optimizer covers every CustomCLIP parameter, ours the prompt learner only: the
    weights load, the optimizer starts afresh, the finished run only re-tests."""
    trained = load_checkpoint(str(maple_run / "MultiModalPromptLearner" / "model.pth.tar-2"))["state_dict"]
    official_maple_file(tmp_path / "official", tiny_clip_path, trained)
    run(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "official")
    log = (tmp_path / "official" / "log.txt").read_text()
    assert "Optimizer state not restorable" in log and "Previous epoch: 2" in log and "epoch [" not in log
    assert read_results(tmp_path / "official")["correct"] == read_results(maple_run)["correct"]


def test_official_file_from_another_clip_is_reported(maple_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    trained = load_checkpoint(str(maple_run / "MultiModalPromptLearner" / "model.pth.tar-2"))["state_dict"]

    def other_clip(state):
        state["image_encoder.ln_post.weight"] = state["image_encoder.ln_post.weight"] + 1

    official_maple_file(tmp_path / "official", tiny_clip_path, trained, edit=other_clip)
    results = evaluate(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "theirs", tmp_path / "official")
    log = (tmp_path / "theirs" / "log.txt").read_text()
    assert "Warning: 1 of the checkpoint's" in log and "image_encoder.ln_post.weight" in log
    assert results["correct"] == read_results(maple_run)["correct"]  # the configured backbone is kept


def test_file_without_prompt_learner_keys_is_refused(data_root, tiny_clip_path, tiny_opts, tmp_path):
    os.makedirs(tmp_path / "bad" / "MultiModalPromptLearner")
    torch.save({"state_dict": {"ctx": torch.zeros(2, 128)}, "epoch": 2},
               tmp_path / "bad" / "MultiModalPromptLearner" / "model.pth.tar-2")
    with pytest.raises(CheckpointError, match=r"tar-2 does not fit MaPLe: it has no 'prompt_learner.\*' keys"):
        evaluate(MAPLE, data_root, tiny_clip_path, tiny_opts, tmp_path / "out", tmp_path / "bad")


# ---- KgCoOp ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kgcoop_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    return train_once(tmp_path_factory, "kgcoop", lambda out: run(KGCOOP, data_root, tiny_clip_path, tiny_opts, out))


def test_kgcoop_trains_with_the_official_boolean_ctx_init(kgcoop_run):
    checkpoint = load_checkpoint(str(kgcoop_run / "prompt_learner" / "model.pth.tar-2"))
    assert list(checkpoint["state_dict"]) == ["ctx", "token_prefix", "token_suffix"]
    assert checkpoint["state_dict"]["ctx"].shape == (4, 128)
    log = (kgcoop_run / "log.txt").read_text()
    assert 'Initial context: "a photo of a"' in log and " acc " in log
    assert "* accuracy:" in log[log.index("Finish training"):]


def test_kgcoop_base_to_new(kgcoop_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    results = evaluate(KGCOOP, data_root, tiny_clip_path, tiny_opts, tmp_path / "test_new", kgcoop_run, "new")
    assert results["subsample"] == "new" and results["num_classes"] == 2
    assert "* accuracy:" in (tmp_path / "test_new" / "log.txt").read_text()


def test_official_kgcoop_file_evaluates_like_ours(kgcoop_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """The KgCoOp fork's file also holds the unused `bias_vectors` and `meta_net` (fp16)."""
    trained = load_checkpoint(str(kgcoop_run / "prompt_learner" / "model.pth.tar-2"))["state_dict"]
    state = {"ctx": trained["ctx"], "bias_vectors": torch.randn(1, 128).half(),
             "token_prefix": trained["token_prefix"], "token_suffix": trained["token_suffix"],
             "meta_net.linear1.weight": torch.randn(128, 128).half(), "meta_net.linear1.bias": torch.zeros(128).half()}
    os.makedirs(tmp_path / "official" / "prompt_learner")
    make_official_style_checkpoint(tmp_path / "official" / "prompt_learner" / "model.pth.tar-2", state, 2)

    theirs = evaluate(KGCOOP, data_root, tiny_clip_path, tiny_opts, tmp_path / "theirs", tmp_path / "official")
    assert (theirs["correct"], theirs["macro_f1"]) == (read_results(kgcoop_run)["correct"],
                                                       read_results(kgcoop_run)["macro_f1"])
    assert "Warning" not in (tmp_path / "theirs" / "log.txt").read_text()


def test_unknown_kg_loss_is_a_clear_error(data_root, tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(ValueError, match="KG_LOSS must be one of"):
        run(KGCOOP, data_root, tiny_clip_path, tiny_opts, tmp_path, "--no-train", opts=["TRAINER.COOP.KG_LOSS", "l2"])
