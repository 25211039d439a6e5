"""The few-shot and cross-dataset grids of scripts/methods.py (configs per method, K and dataset, the
official layouts, zero-shot CLIP once per dataset, DPC's stage 1, refusing a class-specific context)
and how scripts/launch.py orders and gates them (an evaluation waits for its source). In-process."""
import os
import subprocess
import sys

import pytest

from scripts import launch as launcher
from scripts.methods import (DG_TARGETS, METHODS, XD_TARGETS, GridError, config_path, protocol_grid,
                             resolve_fewshot, resolve_xd)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("method, dataset, shots, config", [
    ("CoOp", "caltech101", 1, "vit_b16_ep50"), ("CoOp", "dtd", 2, "vit_b16_ep100"), ("CoOp", "dtd", 4, "vit_b16_ep100"),
    ("CoOp", "dtd", 8, "vit_b16"), ("CoOp", "dtd", 16, "vit_b16"), ("CoOp", "imagenet", 16, "vit_b16_ep50"),
    ("DGPrompt", "dtd", 4, "vit_b16_c2_ep20_batch4_4+4ctx"), ("DGPrompt", "dtd", 8, "vit_b16_c2_ep10_batch4_4+4ctx"),
    ("MaPLe", "eurosat", 1, "vit_b16_c2_ep5_batch4_2ctx"), ("KgCoOp", "eurosat", 16, "vit_b16_ep100_ctxv1"),
    ("DPC_MaPLe", "dtd", 2, "vit_b16_ep20")])
def test_fewshot_config_per_method_and_k(method, dataset, shots, config):
    run = resolve_fewshot(method, dataset, shots, 3, output="out")
    assert run.config == config and os.path.isfile(run.config_file)
    assert run.run_dir == os.path.join("out", "few_shot", dataset, method, f"{config}_{shots}shots", "seed3")


def test_fewshot_options_stage1_and_zero_shot_layout():
    assert resolve_fewshot("KgCoOp", "dtd", 4, 1).opts == ("TRAINER.COOP.W", "8.0", "DATALOADER.TRAIN_X.BATCH_SIZE",
                                                             "32")
    dpc = resolve_fewshot("DPC_CoOp", "dtd", 4, 2, output="out", tag="wb05")
    assert dpc.backbone == "CoOp" and dpc.opts == ("TRAINER.COOP.N_CTX", "16")  # CoOp's 16 random tokens
    assert dpc.stage1_dir == os.path.join("out", "few_shot", "dtd", "CoOp", "vit_b16_ep100_4shots", "seed2")
    assert dpc.run_dir == os.path.join("out", "few_shot", "dtd", "DPC_CoOp", "vit_b16_ep20_4shots", "wb05", "seed2")
    zero_shot = resolve_fewshot("ZeroshotCLIP", "dtd", 4, 2, output="out")
    assert zero_shot.eval_only and zero_shot.run_dir == os.path.join("out", "ZeroshotCLIP", "vit_b16", "dtd")
    custom = resolve_fewshot("CoOp", "dtd", 1, 1, cfg="configs/trainers/CoOp/vit_b16_ctxv1.yaml")
    assert custom.config == "vit_b16_ctxv1" and custom.folder == "vit_b16_ctxv1_1shots"


def test_xd_source_targets_and_dpc_stage1():
    source = resolve_xd("MaPLe", 2, output="out")
    assert source.config == "vit_b16_c2_ep5_batch4_2ctx_cross_datasets" and source.stage == 0 and not source.needs
    assert source.run_dir == os.path.join("out", "imagenet", "MaPLe", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots",
                                          "seed2")
    target = resolve_xd("MaPLe", 2, "imagenet_r", output="out")
    assert target.run_dir == os.path.join("out", "evaluation", "MaPLe",
                                          "vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots", "imagenet_r", "seed2")
    assert target.needs == (source.run_dir,) and target.stage == 2
    assert target.command()[:2] == ["env", "PHASE=test"] and target.command()[-2:] == ["2", "imagenet_r"]
    dpc = resolve_xd("DPC_MaPLe", 1, "dtd", output="out")
    assert dpc.opts == ("TRAINER.MAPLE.PROMPT_DEPTH", "3") and dpc.stage1_dir == os.path.join(
        "out", "imagenet", "MaPLe", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots", "seed1")
    kgcoop = resolve_xd("KgCoOp", 1)
    assert kgcoop.folder == "vit_b16_ep100_ctxv1_16shots" and "OPTIM.MAX_EPOCH" in kgcoop.opts
    assert resolve_xd("CoOp", 1).config == "vit_b16_ep50_ctxv1"  # the CoCoOp paper's CoOp row


def test_every_protocol_config_exists():
    for method, entry in METHODS.items():
        for setting in (s for s in (entry.fewshot, entry.xd) if s is not None):  # None: no setting
            for name in {setting.config, setting.imagenet_config, *(n for _, n in setting.by_shots)} - {""}:
                assert os.path.isfile(config_path(method, entry, name)[1]), (method, name)


def test_grids_run_zero_shot_once_and_sources_before_their_targets():
    runs = protocol_grid("fewshot", "ZeroshotCLIP,CoOp", "dtd,eurosat", "1,2", "1,2")
    assert [r.name for r in runs[:2]] == ["ZeroshotCLIP/vit_b16 dtd", "ZeroshotCLIP/vit_b16 eurosat"]
    assert len(runs) == 2 + 2 * 2 * 2 and len(protocol_grid("fewshot", "CoOp", "all", "all")) == 11 * 5 * 3
    runs = protocol_grid("xd", "ZeroshotCLIP,CoOp", "all", "1,2")
    assert len(runs) == (1 + 14) + 2 * (1 + 14)
    coop = [r for r in runs if r.method == "CoOp"]
    assert [r.dataset for r in coop[:15]] == ["imagenet", *XD_TARGETS, *DG_TARGETS]
    assert [r.dataset for r in protocol_grid("xd", "CoOp", "dg", "1")] == ["imagenet", *DG_TARGETS]
    assert [r.dataset for r in protocol_grid("xd", "CoOp", "none", "1")] == ["imagenet"]


def test_a_class_specific_context_and_unknown_names_fail_before_any_work(tmp_path):
    with pytest.raises(GridError, match="class-specific context .*cannot be evaluated on other datasets"):
        protocol_grid("xd", "ZeroshotCLIP,CoOp", "all", "1", opts=("TRAINER.COOP.CSC", "True"))
    csc = tmp_path / "csc.yaml"
    csc.write_text("TRAINER:\n  COOP:\n    CSC: True\n")
    with pytest.raises(GridError, match="class-specific"):
        resolve_xd("CoOp", 1, cfg=str(csc))
    assert resolve_xd("CoOp", 1, cfg=str(csc), user_opts=("TRAINER.COOP.CSC", "False")).config == "csc"
    with pytest.raises(GridError, match="Unknown target 'imagenet_b'"):
        protocol_grid("xd", "CoOp", "imagenet_b", "1")
    with pytest.raises(GridError, match="No fewshot config for method 'MyMethod'"):
        resolve_fewshot("MyMethod", "dtd", 1, 1)
    result = subprocess.run(["bash", "scripts/xd.sh", "CoOp", "1", "TRAINER.COOP.CSC", "True"], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "OUTPUT": str(tmp_path / "out"),
                                                                 "PYTHON": sys.executable})
    assert result.returncode == 2 and "class-specific context" in result.stderr
    assert not (tmp_path / "out").exists()


def finish(run):
    os.makedirs(run.run_dir, exist_ok=True)
    open(os.path.join(run.run_dir, "results.json"), "w").close()


def test_an_evaluation_waits_for_its_source_and_a_failed_source_blocks_it(tmp_path):
    runs = launcher.queue_order(protocol_grid("xd", "ZeroshotCLIP,CoOp", "dtd,imagenet_a", "1", output=str(tmp_path)))
    assert [r.stage for r in runs] == [0] * 4 + [2, 2]  # zero-shot CLIP and the source, then the evaluations
    assert [r.dataset for r in runs] == ["imagenet", "imagenet", "imagenet_a", "dtd", "imagenet_a", "dtd"]
    source, targets = runs[0], runs[4:]  # largest first: the source trains on 16 shots of 1000 classes
    assert source.method == "CoOp" and all(t.needs == (source.run_dir,) for t in targets)
    pending = [source, *targets]
    ready, blocked = launcher.take_ready(pending, [])
    assert ready is source and not blocked
    assert launcher.take_ready(pending, [source]) == (None, [])  # the targets wait for the running source
    finish(source)
    assert launcher.take_ready(pending, []) == (targets[0], [])
    os.remove(os.path.join(source.run_dir, "results.json"))  # e.g. the source failed
    assert launcher.take_ready(pending, []) == (None, [targets[1]]) and not pending


def test_slurm_arrays_follow_the_stages(tmp_path, capsys):
    output = tmp_path / "output"
    assert launcher.main(["ZeroshotCLIP,CoOp,DPC_CoOp", "dtd", "1", "--protocol", "xd", "--slurm", "--dry-run",
                          "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    names = sorted(os.path.basename(p).rsplit("-", 2)[0] for p in os.listdir(output / "slurm") if p.endswith(".sbatch"))
    assert names == ["xd", "xd-dpc", "xd-eval"]
    commands = {name: open(next(str(output / "slurm" / p) for p in os.listdir(output / "slurm")
                                if p.startswith(name + "-2") and p.endswith(".commands"))).read().splitlines()
                for name in names}
    assert [c.split("xd.sh ")[1] for c in commands["xd"]] == ["CoOp 1 none", "ZeroshotCLIP 1 none",
                                                               "ZeroshotCLIP 1 dtd"]
    assert [c.split("xd.sh ")[1] for c in commands["xd-dpc"]] == ["DPC_CoOp 1 none"]
    assert all(c.startswith("env PHASE=test bash ") for c in commands["xd-eval"]) and len(commands["xd-eval"]) == 2
    assert printed.count("--dependency=afterany:$JOB") == 2


def test_launch_status_of_a_fewshot_grid(tmp_path, capsys):
    output = str(tmp_path / "output")
    for run in protocol_grid("fewshot", "CoOp", "dtd", "1,2", "1", output=output)[:1]:
        finish(run)
    assert launcher.main(["CoOp", "dtd", "1,2", "--protocol", "fewshot", "--shots", "1", "--status",
                          "--output", output]) == 0
    assert "2 runs: 1 done, 0 running, 0 failed/interrupted, 1 not started" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--shots must be one number"):
        launcher.main(["CoOp", "dtd", "1", "--protocol", "xd", "--shots", "1,2", "--output", output])
