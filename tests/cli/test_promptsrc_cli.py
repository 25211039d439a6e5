"""Base-to-new through the shell scripts for IVLP, PromptSRC and their DPC variants: `scripts/dpc/base2new.sh`
runs stage 1 through `scripts/base2new.sh` (PromptSRC; IVLP's stage 1 is finished beforehand where the
script looks for it, to save two process starts), then DPC's stage 2 and its new-class evaluation."""
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO, read_results, run_train

pytestmark = pytest.mark.slow

STAGE1_CONFIG = "vit_b16_c2_ep20_batch4_4+4ctx"


def run_dir(output, phase, method, config):
    return os.path.join(str(output), "base2new", phase, "caltech101", "shots_2", method, config, "seed1")


def test_dpc_script_runs_both_deep_backbones_end_to_end(data_root, tiny_clip_path, tiny_opts, tmp_path):
    opts = [*tiny_opts, "OPTIM.MAX_EPOCH", "1", "TRAINER.PROMPTSRC.GPA_MEAN", "1"]
    ivlp_base, ivlp_new = (run_dir(tmp_path, phase, "IVLP", STAGE1_CONFIG) for phase in ("train_base", "test_new"))
    run_train(data_root, tiny_clip_path, tiny_opts, "IVLP", f"IVLP/{STAGE1_CONFIG}.yaml", ivlp_base,
              opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "base"])
    run_train(data_root, tiny_clip_path, tiny_opts, "IVLP", f"IVLP/{STAGE1_CONFIG}.yaml", ivlp_new, "--eval-only",
              "--model-dir", ivlp_base, opts=[*opts, "DATASET.SUBSAMPLE_CLASSES", "new"])

    env = {**os.environ, "DATA": data_root, "OUTPUT": str(tmp_path), "SHOTS": "2", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    for backbone in ("IVLP", "PromptSRC"):
        command = ["bash", os.path.join(REPO, "scripts", "dpc", "base2new.sh"), backbone, "caltech101", "1", *opts,
                   "MODEL.BACKBONE.NAME", tiny_clip_path]
        output = subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
        assert ("Done already: IVLP caltech101 seed 1" in output) == (backbone == "IVLP")

        stage1_base, stage1_new = (run_dir(tmp_path, phase, backbone, STAGE1_CONFIG)
                                   for phase in ("train_base", "test_new"))
        dpc_base, dpc_new = (run_dir(tmp_path, phase, f"DPC_{backbone}", "vit_b16_ep20")
                             for phase in ("train_base", "test_new"))
        assert read_results(stage1_base)["subsample"] == "base" and read_results(stage1_new)["subsample"] == "new"
        assert read_results(dpc_base)["trainer"] == f"DPC_{backbone}"
        new, backbone_new = read_results(dpc_new), read_results(stage1_new)
        assert (new["correct"], new["macro_f1"]) == (backbone_new["correct"], backbone_new["macro_f1"])
        assert f'Loaded the tuned prompt P from "{stage1_base}/VLPromptLearner/model.pth.tar-1"' in open(
            os.path.join(dpc_base, "log.txt")).read()
    assert "Using GPA model for final inference..." in open(
        os.path.join(run_dir(tmp_path, "train_base", "PromptSRC", STAGE1_CONFIG), "log.txt")).read()
