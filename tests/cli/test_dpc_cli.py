"""DPC end to end: stage 1 (backbone), stage 2 (DPC_<backbone>) and the new-class evaluation through
`train.main` for each backbone; official CoOp+DPC checkpoints and `SPLE.*` keys; the one-command script."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from engine.checkpoint import load_checkpoint
from tests.helpers.cli import REPO, read_results, run_train
from tests.helpers.official import make_official_style_checkpoint


# Stage-1 config and the options that keep the prompt shapes equal in every stage (the tiny CLIP
# has 3 layers, so MaPLe runs with depth 2; IVLP and PromptSRC's depth 9 acts as 3).
BACKBONES = {
    "CoOp": ("CoOp/vit_b16_bs4_ep10_lr35.yaml", ["TRAINER.COOP.N_CTX", "4"], "prompt_learner"),
    "KgCoOp": ("KgCoOp/vit_b16_ep100_ctxv1.yaml", [], "prompt_learner"),
    "MaPLe": ("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"], "MultiModalPromptLearner"),
    "IVLP": ("IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml", [], "VLPromptLearner"),
    "PromptSRC": ("PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", ["TRAINER.PROMPTSRC.GPA_MEAN", "1"], "VLPromptLearner"),
}


@pytest.fixture(scope="module")
def pipelines(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """backbone -> run directories of stage 1 (+ its new-class test), stage 2 and DPC's new-class test."""
    done = {}

    def pipeline(backbone):
        if backbone in done:
            return done[backbone]
        stage1_config, shape_opts, _ = BACKBONES[backbone]
        out = tmp_path_factory.mktemp(f"dpc_{backbone}")
        dirs = done[backbone] = {name: str(out / name) for name in ("stage1", "stage1_new", "base", "new")}

        def go(trainer, config, name, *flags, opts=()):
            run_train(data_root, tiny_clip_path, tiny_opts, trainer, config, dirs[name], *flags, opts=[*shape_opts, *opts])

        go(backbone, stage1_config, "stage1", opts=["OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", "base"])
        go(backbone, stage1_config, "stage1_new", "--eval-only", "--model-dir", dirs["stage1"], "--load-epoch", "1",
           opts=["DATASET.SUBSAMPLE_CLASSES", "new"])
        dpc_config = f"DPC/{backbone}/vit_b16_ep20.yaml"
        dpc_opts = ["OPTIM.MAX_EPOCH", "2", "TRAINER.DPC.BACKBONE_DIR", dirs["stage1"]]
        go(f"DPC_{backbone}", dpc_config, "base", opts=[*dpc_opts, "DATASET.SUBSAMPLE_CLASSES", "base"])
        go(f"DPC_{backbone}", dpc_config, "new", "--eval-only", "--model-dir", dirs["base"], "--load-epoch", "2",
           opts=[*dpc_opts, "DATASET.SUBSAMPLE_CLASSES", "new"])
        return dirs

    return pipeline


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_three_stages_write_base_and_new_results(pipelines, backbone):
    dirs = pipelines(backbone)
    base, new = read_results(dirs["base"]), read_results(dirs["new"])
    assert (base["trainer"], base["subsample"], base["num_classes"], base["epoch"]) == (f"DPC_{backbone}", "base", 3, 2)
    assert (new["trainer"], new["subsample"], new["num_classes"], new["epoch"]) == (f"DPC_{backbone}", "new", 2, 2)
    log = open(os.path.join(dirs["base"], "log.txt")).read()
    assert "Loaded the tuned prompt P from" in log and "top-3 hard negatives" in log
    assert "Finish training" in log and "* accuracy:" in log[log.index("Finish training"):]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_new_accuracy_is_the_backbones(pipelines, backbone):
    dirs = pipelines(backbone)
    dpc, stage1 = read_results(dirs["new"]), read_results(dirs["stage1_new"])
    assert (dpc["correct"], dpc["macro_f1"]) == (stage1["correct"], stage1["macro_f1"])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_stage2_checkpoint_has_the_backbones_folder_and_keys(pipelines, backbone):
    dirs, folder = pipelines(backbone), BACKBONES[backbone][2]
    stage1 = load_checkpoint(os.path.join(dirs["stage1"], folder, "model.pth.tar-1"))["state_dict"]
    stage2 = load_checkpoint(os.path.join(dirs["base"], folder, "model.pth.tar-2"))["state_dict"]
    assert list(stage2) == list(stage1)
    assert any(not torch.equal(stage2[k], stage1[k]) for k in stage1 if "token_" not in k)  # θ was trained


@pytest.mark.parametrize("backbone", ["IVLP", "PromptSRC"])
def test_dpc_raises_the_base_accuracy_of_an_imperfect_deep_backbone(data_root, tiny_clip_path, tiny_opts, tmp_path,
                                                                      backbone):
    """Stage 1 trained for one epoch is at chance on the base classes; five DPC epochs lift it.
    (On the random tiny CLIP, deep text prompts trained with this step size blow up and make every
    class text alike, for the backbones themselves too: the text prompt is the first layer's here;
    the vision prompts stay deep.)"""
    config, _, _ = BACKBONES[backbone]
    opts = [f"TRAINER.{backbone.upper()}.PROMPT_DEPTH_TEXT", "1", "DATASET.NUM_SHOTS", "4",
            "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.PROMPTSRC.GPA_MEAN", "1"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    run_train(data_root, tiny_clip_path, tiny_opts, backbone, config, stage1, opts=[*opts, "OPTIM.MAX_EPOCH", "1"])
    run_train(data_root, tiny_clip_path, tiny_opts, f"DPC_{backbone}", f"DPC/{backbone}/vit_b16_ep20.yaml", stage2,
              opts=[*opts, "OPTIM.MAX_EPOCH", "5", "OPTIM.LR", "0.02", "TRAINER.DPC.BACKBONE_DIR", str(stage1)])
    assert read_results(stage2)["accuracy"] > read_results(stage1)["accuracy"]


def test_official_coop_dpc_checkpoint_evaluates_to_the_same_accuracies(pipelines, data_root, tiny_clip_path,
                                                                       tiny_opts, tmp_path):
    """A stage-2 file in the official layout (pickled scheduler object included), read by the alias
    trainer `StackSPLE_CoOp` configured with the official `SPLE.*` keys."""
    dirs = pipelines("CoOp")
    ours = load_checkpoint(os.path.join(dirs["base"], "prompt_learner", "model.pth.tar-2"))["state_dict"]
    official_dir = tmp_path / "official"
    os.makedirs(official_dir / "prompt_learner")
    make_official_style_checkpoint(official_dir / "prompt_learner" / "model.pth.tar-20",
                                   {k: ours[k] for k in ("ctx", "token_prefix", "token_suffix")}, 20)
    sple = ["TRAINER.COOP.N_CTX", "4", "SPLE.BACK_CKPT_PATH", dirs["stage1"], "SPLE.BACK_CKPT_EPOCH", "1",
            "SPLE.STACK.MODE", "converse", "SPLE.STACK.WEIGHT", "0.2", "SPLE.STACK.WEIGHT_FOR_NEW", "0.0",
            "SPLE.INFER_TOPK", "8"]
    for subsample, ours_dir in (("base", dirs["base"]), ("new", dirs["new"])):
        out = tmp_path / subsample
        run_train(data_root, tiny_clip_path, tiny_opts, "StackSPLE_CoOp", "DPC/CoOp/vit_b16_ep20.yaml", out, "--eval-only",
            "--model-dir", str(official_dir), "--load-epoch", "20",
            opts=[*sple, "DATASET.SUBSAMPLE_CLASSES", subsample])
        assert read_results(out)["accuracy"] == read_results(ours_dir)["accuracy"]
        assert read_results(out)["macro_f1"] == read_results(ours_dir)["macro_f1"]


def test_one_command_script_reuses_stage1_and_runs_dpc(data_root, tiny_clip_path, tiny_opts, tmp_path):
    """Stage 1 is finished beforehand where the script looks for it (a process start costs seconds
    here); the script must find it, then run stage 2 and the new-class evaluation."""
    run_dir = os.path.join(str(tmp_path), "base2new", "{}", "caltech101", "shots_2", "{}", "seed1")
    stage1, stage1_new = (run_dir.format(phase, "CoOp/vit_b16_bs4_ep10_lr35_nctx4")
                          for phase in ("train_base", "test_new"))
    opts = [*tiny_opts, "OPTIM.MAX_EPOCH", "1"]
    run_train(data_root, tiny_clip_path, tiny_opts, "CoOp", "CoOp/vit_b16_bs4_ep10_lr35.yaml", stage1,
        opts=["TRAINER.COOP.N_CTX", "4", *opts, "DATASET.SUBSAMPLE_CLASSES", "base"])
    run_train(data_root, tiny_clip_path, tiny_opts, "CoOp", "CoOp/vit_b16_bs4_ep10_lr35.yaml", stage1_new, "--eval-only",
        "--model-dir", stage1, opts=["TRAINER.COOP.N_CTX", "4", *opts, "DATASET.SUBSAMPLE_CLASSES", "new"])

    # through the sweep's entry point, with the stage-2 config given as a YAML path
    config = tmp_path / "configs" / "my_dpc.yaml"
    config.parent.mkdir()
    shutil.copy(os.path.join(REPO, "configs", "trainers", "DPC", "CoOp", "vit_b16_ep20.yaml"), config)
    env = {**os.environ, "DATA": data_root, "OUTPUT": str(tmp_path), "SHOTS": "2", "PYTHON": sys.executable}
    command = ["bash", os.path.join(REPO, "scripts", "base2new.sh"), "DPC_CoOp", "caltech101", "1", str(config),
               *opts, "MODEL.BACKBONE.NAME", tiny_clip_path]
    output = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert "Done already: CoOp caltech101 seed 1" in output
    base_dir, new_dir = (run_dir.format(phase, "DPC_CoOp/my_dpc") for phase in ("train_base", "test_new"))
    assert read_results(base_dir)["subsample"] == "base" and read_results(new_dir)["subsample"] == "new"
    assert read_results(new_dir)["correct"] == read_results(stage1_new)["correct"]
    assert f'Loaded the tuned prompt P from "{stage1}/prompt_learner/model.pth.tar-1"' in open(
        os.path.join(base_dir, "log.txt")).read()

    again = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert "Done already: DPC_CoOp caltech101 seed 1" in again
