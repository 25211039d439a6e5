"""DPL and DGPrompt (reconstructed) base-to-new through `train.main` on the synthetic Caltech101,
and their DPC variants (stage 1, stage 2, new-class evaluation)."""

import pytest
import torch

from engine.checkpoint import load_checkpoint
from tests.helpers.cli import read_results, run_train


# Paper config and the options that fit the tiny CLIP (3 layers): depth 2, few shots, 2 epochs.
METHODS = {
    "DPL": ("DPL/vit_b16_c2_ep5_batch4_4+4ctx.yaml", ["TRAINER.DPL.DEPTH_V", "2", "TRAINER.DPL.DEPTH_T", "2"]),
    "DGPrompt": ("DGPrompt/vit_b16_c2_ep10_batch4_4+4ctx.yaml", ["TRAINER.DGPROMPT.DEPTH", "2"]),
}
CHECKPOINT_KEYS = {
    "DPL": {"ctx_text", "ctx_vision", "beta_text", "beta_vision"},
    "DGPrompt": {"ctx_text", "ctx_vision", "token_prefix", "token_suffix", "tgv.0.q.weight", "tgv.1.o.bias",
                 "igt.0.0.weight", "igt.1.2.bias"},
}


@pytest.fixture(scope="module")
def base_to_new(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """method -> (train_base dir, test_new dir), each trained once."""
    done = {}

    def pipeline(method):
        if method not in done:
            config, opts = METHODS[method]
            out = tmp_path_factory.mktemp(method)
            base, new = out / "train_base", out / "test_new"
            run_train(data_root, tiny_clip_path, tiny_opts, method, config, base,
                opts=[*opts, "OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base"])
            run_train(data_root, tiny_clip_path, tiny_opts, method, config, new, "--eval-only", "--model-dir", str(base),
                "--load-epoch", "2", opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "new"])
            done[method] = base, new
        return done[method]

    return pipeline


@pytest.mark.parametrize("method", list(METHODS))
def test_base_to_new_round_trip(base_to_new, method):
    base, new = base_to_new(method)
    checkpoint = load_checkpoint(str(base / "prompt_learner" / "model.pth.tar-2"))
    assert set(checkpoint["state_dict"]) >= CHECKPOINT_KEYS[method] and checkpoint["epoch"] == 2
    assert (read_results(base)["subsample"], read_results(base)["num_classes"]) == ("base", 3)
    assert (read_results(new)["subsample"], read_results(new)["num_classes"], read_results(new)["epoch"]) == ("new", 2, 2)
    log = (base / "log.txt").read_text()
    assert f"{method} (reconstructed)" in log and "* accuracy:" in log[log.index("Finish training"):]


@pytest.mark.parametrize("method", list(METHODS))
def test_eval_only_reproduces_the_final_test(base_to_new, method, data_root, tiny_clip_path, tiny_opts, tmp_path):
    base, _ = base_to_new(method)
    config, opts = METHODS[method]
    run_train(data_root, tiny_clip_path, tiny_opts, method, config, tmp_path, "--eval-only", "--model-dir", str(base),
        "--load-epoch", "2", opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert read_results(tmp_path)["correct"] == read_results(base)["correct"]
    assert read_results(tmp_path)["macro_f1"] == read_results(base)["macro_f1"]


# ---- DPC on top: stage 1 is the base-to-new run above ------------------------------------------------
# Cloned tensors (θ, trained in stage 2) and stage-1 tensors that stay frozen.
DPC_TENSORS = {
    "DPL": ({"ctx_text", "ctx_vision"}, {"beta_text", "beta_vision"}),
    "DGPrompt": ({"ctx_text", "ctx_vision"}, {"tgv.0.q.weight", "tgv.1.o.bias", "igt.0.0.weight", "igt.1.2.bias"}),
}


@pytest.fixture(scope="module")
def dpc_runs(base_to_new, data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """method -> (stage-1 dir, DPC base dir, DPC new dir)."""
    done = {}

    def pipeline(method):
        if method not in done:
            stage1, _ = base_to_new(method)
            out = tmp_path_factory.mktemp(f"dpc_{method}")
            config, opts = f"DPC/{method}/vit_b16_ep20.yaml", [*METHODS[method][1], "OPTIM.MAX_EPOCH", "2",
                                                                 "TRAINER.DPC.BACKBONE_DIR", str(stage1)]
            run_train(data_root, tiny_clip_path, tiny_opts, f"DPC_{method}", config, out / "base",
                opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "base"])
            run_train(data_root, tiny_clip_path, tiny_opts, f"DPC_{method}", config, out / "new", "--eval-only",
                "--model-dir", str(out / "base"), "--load-epoch", "2", opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "new"])
            done[method] = stage1, out / "base", out / "new"
        return done[method]

    return pipeline


@pytest.mark.parametrize("method", list(METHODS))
def test_dpc_trains_the_cloned_prompts_only_and_keeps_the_backbone_for_new_classes(dpc_runs, base_to_new, method):
    stage1, base, new = dpc_runs(method)
    p = load_checkpoint(str(stage1 / "prompt_learner" / "model.pth.tar-2"))["state_dict"]
    theta = load_checkpoint(str(base / "prompt_learner" / "model.pth.tar-2"))["state_dict"]
    cloned, frozen = DPC_TENSORS[method]
    assert all(not torch.equal(theta[k], p[k]) for k in cloned)
    assert all(torch.equal(theta[k], p[k]) for k in frozen)
    assert f"prompt tensors {sorted('prompt_learner.' + k for k in cloned)}" in (base / "log.txt").read_text()
    assert (read_results(base)["trainer"], read_results(base)["num_classes"]) == (f"DPC_{method}", 3)
    # ω_new = 0: the new classes see the stage-1 prompts, so DPC's new accuracy is the backbone's.
    _, stage1_new = base_to_new(method)
    assert (read_results(new)["num_classes"], read_results(new)["correct"], read_results(new)["macro_f1"]) == \
        (2, read_results(stage1_new)["correct"], read_results(stage1_new)["macro_f1"])
