"""PromptKD and DPC_PromptKD through the scripts: base-to-new with scripts/base2new.sh (SHOTS=0, the config as
a YAML path), then DPC's stages with scripts/dpc/base2new.sh, which finds that PromptKD run as its stage 1."""
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO, read_results

pytestmark = pytest.mark.slow


def test_base_to_new_round_trip_for_promptkd_and_dpc_promptkd(data_root, promptkd_clips, promptkd_teacher, tiny_opts,
                                                              tmp_path):
    student, teacher = promptkd_clips
    opts = [*tiny_opts, "OPTIM.MAX_EPOCH", "1", "MODEL.BACKBONE.NAME", student,
            "TRAINER.PROMPTKD.TEACHER_NAME", teacher, "TRAINER.PROMPTKD.TEACHER_CKPT", promptkd_teacher]
    env = {**os.environ, "DATA": data_root, "OUTPUT": str(tmp_path), "PYTHON": sys.executable}
    stage1_config = os.path.join(REPO, "configs", "trainers", "PromptKD", "vit_b16_c2_ep20_batch32_4+4ctx.yaml")
    subprocess.run(["bash", os.path.join(REPO, "scripts", "base2new.sh"), "PromptKD", "caltech101", "1", stage1_config,
                    *opts, "TRAINER.PROMPTKD.KD_WEIGHT", "1000.0"], env={**env, "SHOTS": "0"}, cwd=REPO, check=True,
                   capture_output=True, text=True)
    run_dir = os.path.join(str(tmp_path), "base2new", "{}", "caltech101", "shots_{}", "{}", "seed1")
    kd_base, kd_new = (run_dir.format(phase, 0, "PromptKD/vit_b16_c2_ep20_batch32_4+4ctx")
                       for phase in ("train_base", "test_new"))
    base, new = read_results(kd_base), read_results(kd_new)
    assert (base["split"], base["num_shots"], base["total"], base["selected_on_test"]) == ("val", 0, 6, True)
    assert (new["split"], new["subsample"], new["total"], new["selected_epoch"]) == ("test", "new", 4, 1)

    dpc_config = os.path.join(REPO, "configs", "trainers", "DPC", "PromptKD", "vit_b16_c2_ep20_batch4_4+4ctx.yaml")
    output = subprocess.run(["bash", os.path.join(REPO, "scripts", "dpc", "base2new.sh"), "PromptKD", "caltech101", "1",
                             *opts], env={**env, "SHOTS": "2", "CFG": dpc_config}, cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    assert "Done already: PromptKD caltech101 seed 1" in output
    dpc_base, dpc_new = (run_dir.format(phase, 2, "DPC_PromptKD/vit_b16_c2_ep20_batch4_4+4ctx")
                         for phase in ("train_base", "test_new"))
    assert (read_results(dpc_base)["subsample"], read_results(dpc_base)["num_classes"]) == ("base", 3)
    assert read_results(dpc_new)["correct"] == new["correct"]  # ω_new = 0: the new classes get PromptKD
    assert f'Loaded the PromptKD student (P) from "{kd_base}/VLPromptLearner/model-best.pth.tar"' in open(
        os.path.join(dpc_base, "log.txt")).read()
